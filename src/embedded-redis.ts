import { hkdfSync, randomInt } from 'node:crypto';
import path from 'node:path';
import type { Config } from './config.js';
import { PortInUseError, type DockerEngine } from './docker/engine.js';
import { LABEL, type ContainerSummary } from './docker/types.js';
import type { ImageBuilder } from './images/builder.js';
import type { Logger } from './log.js';
import { portIsFree } from './broker/probe.js';

export const stateImageTag = (imagePrefix: string) => `${imagePrefix}state-redis:1.0.0`;

/** The state store container, its volume (`-data`) and its network all carry this name. */
export const stateContainerName = (brokerId: string) => `osb-${brokerId}-state`;

/** Folder (owned by the redis user in the image) and file the entrypoint reads the password from. */
const PASSWORD_FOLDER = '/run/redis';
const PASSWORD_FILE = 'password';
/** The image's redis user; the file is readable by it alone. */
const REDIS_UID = 999;

/**
 * The state store's password, derived from the broker's encryption key (HKDF-SHA256, its own purpose string):
 * nothing to store, the same after every restart, and never in the container's environment or metadata.
 */
export function statePassword(encryptionKey: Buffer): string {
  return Buffer.from(hkdfSync('sha256', encryptionKey, 'osb-docker-broker', 'state store password', 32)).toString('base64url');
}

/**
 * With no REDIS_URL, the broker keeps its state in its own Redis container: labelled, append-only file on a named
 * volume, on a network of its own (instance containers on the default bridge cannot reach it), published on
 * loopback at a host port fixed when the container is made (so restarts of the container keep its address),
 * password-protected with a password handed over as a file. Returns the URL to reach it.
 */
export async function startEmbeddedRedis(engine: DockerEngine, images: ImageBuilder, config: Config & { encryptionKey: Buffer }, log: Logger): Promise<string> {
  const tag = stateImageTag(config.imagePrefix);
  if (await images.ensure(path.join(config.imagesDir, 'state-redis'), tag)) log.info({ tag }, 'built the state store image');
  const name = stateContainerName(config.brokerId);
  const labels = { [LABEL.broker]: config.brokerId, [LABEL.role]: 'state' };
  const password = statePassword(config.encryptionKey);
  await engine.ensureNetwork(name, labels);
  await engine.ensureVolume(`${name}-data`, labels);

  let existing = await engine.inspectContainer(name);
  const outdated = existing && whyReplace(existing, name, config.statePort);
  if (outdated) {
    // Made by an older version: replaced, and the data volume (so every record) is kept.
    log.info({ container: name, reason: outdated }, 'replacing the state store container; its data volume stays');
    await engine.stopContainer(name, 10);
    await engine.removeContainer(name);
    existing = undefined;
  }
  for (let attempt = 1; ; attempt++) {
    if (!existing) {
      const hostPort = config.statePort ?? (await freeLoopbackPort(config.portRange));
      await engine.createContainer({
        name,
        image: tag,
        labels,
        network: name,
        publish: [{ containerPort: 6379, hostIp: '127.0.0.1', hostPort }],
        volume: { name: `${name}-data`, path: '/data' },
        capDrop: ['ALL'],
        capAdd: ['SETUID', 'SETGID', 'CHOWN'],
      });
      log.info({ container: name, volume: `${name}-data`, network: name, port: hostPort }, 'created the state store container');
    }
    // Written before every start (a restart of the container reads it again); it never leaves the engine API.
    await engine.putFile(name, PASSWORD_FOLDER, { name: PASSWORD_FILE, content: Buffer.from(password), mode: 0o400, uid: REDIS_UID, gid: REDIS_UID });
    try {
      await engine.startContainer(name);
      break;
    } catch (error) {
      if (!(error instanceof PortInUseError)) throw error;
      if (config.statePort) {
        throw new Error(`BROKER_STATE_PORT ${config.statePort} is already in use on 127.0.0.1; free it or choose another port`, { cause: error });
      }
      if (attempt >= 3) throw error;
      // Something else took the port (while the host was down, say): a new container on another port, same data.
      log.warn({ container: name, port: existing?.fixedHostPort }, 'the state store port is taken; moving the state store to another port');
      await engine.removeContainer(name);
      existing = undefined;
    }
  }
  const container = await engine.inspectContainer(name);
  if (!container?.fixedHostPort) throw new Error(`the state store container ${name} has no fixed published port`);
  return `redis://:${encodeURIComponent(password)}@127.0.0.1:${container.fixedHostPort}`;
}

/** Why a state store container cannot stay as it is; undefined when it can. */
function whyReplace(container: ContainerSummary, network: string, statePort: number | undefined): string | undefined {
  if (container.env.some((entry) => entry.startsWith('REDIS_PASSWORD='))) return 'its password is in its environment';
  if (!container.fixedHostPort) return 'its host port changes at every start';
  if (!container.networks?.includes(network) || container.networks.length !== 1) return `it is not on the network ${network} alone`;
  if (statePort && container.fixedHostPort !== statePort) return `it is published on port ${container.fixedHostPort}, not BROKER_STATE_PORT ${statePort}`;
  return undefined;
}

/**
 * A free loopback port for the state store, below the usual ephemeral range (so outgoing connections never take
 * it while the container is down) and outside the instances' range.
 */
async function freeLoopbackPort(instanceRange: { first: number; last: number }): Promise<number> {
  for (let tries = 0; tries < 100; tries++) {
    const port = randomInt(20_000, 32_768);
    if (port >= instanceRange.first && port <= instanceRange.last) continue;
    if (await portIsFree('127.0.0.1', port)) return port;
  }
  throw new Error('found no free port on 127.0.0.1 for the state store; set BROKER_STATE_PORT');
}
