import path from 'node:path';
import type { Config } from './config.js';
import type { DockerEngine } from './docker/engine.js';
import { LABEL } from './docker/types.js';
import type { ImageBuilder } from './images/builder.js';
import type { Logger } from './log.js';
import { newPassword } from './broker/ids.js';

export const stateImageTag = (imagePrefix: string) => `${imagePrefix}state-redis:1.0.0`;

/**
 * With no REDIS_URL, the broker keeps its state in its own Redis container: labelled, append-only file on a
 * named volume, published on loopback only, password-protected. Returns the URL to reach it.
 */
export async function startEmbeddedRedis(engine: DockerEngine, images: ImageBuilder, config: Config, log: Logger): Promise<string> {
  const tag = stateImageTag(config.imagePrefix);
  if (await images.ensure(path.join(config.imagesDir, 'state-redis'), tag)) log.info({ tag }, 'built the state store image');
  const name = `osb-${config.brokerId}-state`;
  const labels = { [LABEL.broker]: config.brokerId, [LABEL.role]: 'state' };
  if (!(await engine.inspectContainer(name))) {
    await engine.ensureVolume(`${name}-data`, labels);
    await engine.createContainer({
      name,
      image: tag,
      labels,
      env: [`REDIS_PASSWORD=${newPassword()}`],
      publish: [{ containerPort: 6379, hostIp: '127.0.0.1', hostPort: 0 }],
      volume: { name: `${name}-data`, path: '/data' },
      capDrop: ['ALL'],
      capAdd: ['SETUID', 'SETGID', 'CHOWN'],
    });
    log.info({ container: name, volume: `${name}-data` }, 'created the state store container');
  }
  await engine.startContainer(name);
  const container = await engine.inspectContainer(name);
  const password = container?.env.find((entry) => entry.startsWith('REDIS_PASSWORD='))?.slice('REDIS_PASSWORD='.length);
  if (!container?.hostPort || !password) throw new Error(`the state store container ${name} has no published port or password`);
  return `redis://:${encodeURIComponent(password)}@127.0.0.1:${container.hostPort}`;
}
