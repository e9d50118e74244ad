import path from 'node:path';
import { loadConfig, PACKAGE_ROOT } from '../config.js';
import { loadCatalog } from '../catalog/load.js';
import { imageTag } from '../catalog/definition.js';
import { DockerEngine } from '../docker/engine.js';
import { ImageBuilder } from '../images/builder.js';
import { createLogger } from '../log.js';
import { stateImageTag } from '../embedded-redis.js';

/** `npm run images`: builds every catalog image and the state store image, showing progress. Built images are skipped. */
async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(process.env.LOG_LEVEL || 'warn');
  const engine = new DockerEngine();
  const images = new ImageBuilder(engine, path.join(PACKAGE_ROOT, 'scripts'), log, config.baseImage);
  const targets = [
    ...loadCatalog(config.catalogDir, config.imagePrefix).map((definition) => ({ folder: definition.folder, tag: imageTag(definition) })),
    { folder: path.join(config.imagesDir, 'state-redis'), tag: stateImageTag(config.imagePrefix) },
  ];
  const baseImage = await images.baseImage((line) => console.log(`  ${line}`));
  for (const { folder, tag } of targets) {
    if (await images.isCurrent(folder, tag)) {
      console.log(`✓ ${tag} (already built from this recipe)`);
      continue;
    }
    console.log(`… building ${tag} from ${path.relative(PACKAGE_ROOT, folder)} (base: ${baseImage})`);
    const started = Date.now();
    await images.ensure(folder, tag, (line) => {
      if (/^(Step \d+\/\d+|Successfully)/.test(line)) console.log(`  ${line}`);
    });
    console.log(`✓ ${tag} built in ${Math.round((Date.now() - started) / 1000)} s`);
  }
}

main().catch((error: Error) => {
  console.error(`npm run images failed: ${error.message}`);
  process.exit(1);
});
