import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import type { DockerEngine } from '../docker/engine.js';
import type { Logger } from '../log.js';

/**
 * Builds images from Dockerfiles kept in the repository (no registry needed). The base image is a build
 * argument: debian:bookworm-slim where present or pullable, else one made with debootstrap by scripts/base-image.sh.
 */
export class ImageBuilder {
  private base?: Promise<string>;
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(
    private readonly engine: DockerEngine,
    private readonly scriptsDir: string,
    private readonly log: Logger,
    private readonly baseImageOverride?: string,
  ) {}

  /** The base image's name; made with debootstrap first when there is none. Its progress goes to `onLine`. */
  baseImage(onLine: (line: string) => void = () => {}): Promise<string> {
    this.base ??= this.baseImageOverride ? Promise.resolve(this.baseImageOverride) : this.runBaseImageScript(onLine);
    return this.base;
  }

  private runBaseImageScript(onLine: (line: string) => void): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const child = spawn('bash', [path.join(this.scriptsDir, 'base-image.sh')], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      const errors: string[] = [];
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      createInterface({ input: child.stderr }).on('line', (line) => {
        errors.push(line);
        onLine(line);
      });
      child.once('error', reject);
      child.once('close', (code) => {
        if (code === 0 && stdout.trim()) return resolve(stdout.trim());
        this.base = undefined;
        reject(new Error(`cannot prepare a Debian base image: ${errors.slice(-3).join(' ') || `exit code ${code}`}`));
      });
    });
  }

  /**
   * Builds `tag` from `contextDir` unless the engine has it from the same recipe (a hash of the folder is kept as an
   * image label, so an edited Dockerfile or script is never silently ignored). Concurrent callers share one build.
   * Returns true if it built.
   */
  async ensure(contextDir: string, tag: string, onLine: (line: string) => void = () => {}): Promise<boolean> {
    const recipe = recipeHash(contextDir);
    if ((await this.engine.imageLabel(tag, RECIPE_LABEL)) === recipe) return false;
    let build = this.inFlight.get(tag);
    if (!build) {
      build = this.build(contextDir, tag, recipe, onLine).finally(() => this.inFlight.delete(tag));
      this.inFlight.set(tag, build);
    }
    await build;
    return true;
  }

  /** True when the engine has `tag` built from the folder as it is now. */
  async isCurrent(contextDir: string, tag: string): Promise<boolean> {
    return (await this.engine.imageLabel(tag, RECIPE_LABEL)) === recipeHash(contextDir);
  }

  private async build(contextDir: string, tag: string, recipe: string, onLine: (line: string) => void): Promise<void> {
    const baseImage = await this.baseImage();
    this.log.info({ tag, baseImage }, 'building image');
    const started = Date.now();
    await this.engine.buildImage(contextDir, tag, { BASE_IMAGE: baseImage }, { 'io.osb-broker.image': tag, [RECIPE_LABEL]: recipe }, onLine);
    this.log.info({ tag, seconds: Math.round((Date.now() - started) / 1000) }, 'image built');
  }
}

const RECIPE_LABEL = 'io.osb-broker.recipe';

/**
 * sha256 over every file of the build folder (paths, modes and contents) but the offering's `service.json`: the broker
 * reads that catalog entry, no image holds it, so editing a description or a shell never rebuilds an image.
 */
export function recipeHash(dir: string): string {
  const hash = createHash('sha256');
  const walk = (current: string) => {
    for (const entry of readdirSync(current).sort()) {
      if (current === dir && entry === 'service.json') continue;
      const full = path.join(current, entry);
      const stat = statSync(full);
      if (stat.isDirectory()) walk(full);
      else
        hash
          .update(`${path.relative(dir, full)}\0${stat.mode & 0o777}\0`)
          .update(readFileSync(full))
          .update('\0');
    }
  };
  walk(dir);
  return hash.digest('hex').slice(0, 16);
}
