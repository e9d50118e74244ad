import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { loadConfig, type Config } from '../../src/config.js';
import { DockerEngine } from '../../src/docker/engine.js';
import { LABEL } from '../../src/docker/types.js';
import { createLogger } from '../../src/log.js';
import { startBroker, type BrokerConfig, type RunningBroker } from '../../src/server.js';
import { stateImageTag } from '../../src/embedded-redis.js';
import { OsbClient } from './osb-client.js';

export const engine = new DockerEngine();

export const PG = {
  service: 'd0fc228f-54d1-4bed-8dd0-38c7a33c4500',
  small: 'fdc3b78d-156f-4bac-aba4-242250cc5840',
  medium: '95ea88b7-404d-4f29-bb9b-7c69ceb825bb',
};

export const uniqueId = (prefix = 'i') => `${prefix}-${randomBytes(6).toString('hex')}`;

/** A real Redis for one test file: a container of the state store image on a random loopback port. */
export async function startTestRedis(): Promise<{ url: string; name: string; stop(): Promise<void> }> {
  const name = `osb-test-redis-${randomBytes(4).toString('hex')}`;
  await engine.createContainer({
    name,
    image: stateImageTag(process.env.BROKER_IMAGE_PREFIX || 'osb-broker/'),
    labels: { [LABEL.role]: 'test-redis' },
    publish: [{ containerPort: 6379, hostIp: '127.0.0.1', hostPort: 0 }],
  });
  await engine.startContainer(name);
  const port = (await engine.inspectContainer(name))!.hostPort!;
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => {});
  for (let attempt = 0; ; attempt++) {
    try {
      await probe.connect();
      await probe.ping();
      break;
    } catch (error) {
      probe.disconnect();
      if (attempt > 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  probe.disconnect();
  return { url, name, stop: () => engine.removeContainer(name) };
}

export interface TestBroker {
  broker: RunningBroker;
  client: OsbClient;
  config: BrokerConfig;
  redisUrl: string;
  /** The test Redis container's name, for tests that pause or stop it. */
  redisContainer: string;
  logs: string[];
  stop(): Promise<void>;
}

/** An in-process broker with its own broker id (labels), Redis and port range, so test files never meet. */
export async function startTestBroker(portBlock: number, overrides: Partial<Config> = {}): Promise<TestBroker> {
  const redis = await startTestRedis();
  const brokerId = `t${randomBytes(4).toString('hex')}`;
  const config: BrokerConfig = {
    ...loadConfig({
      ...process.env,
      PORT: '0',
      REDIS_URL: redis.url,
      BROKER_ID: brokerId,
      BROKER_PORT_RANGE: `${41000 + portBlock * 100}-${41000 + portBlock * 100 + 99}`,
    }),
    ...overrides,
    password: 'test-password',
    encryptionKey: randomBytes(32),
  };
  // Every log line is kept, at the most verbose level, so tests can prove no secret is ever logged.
  const logs: string[] = [];
  const log = createLogger(
    'debug',
    {},
    {
      write: (line: string) => {
        logs.push(line);
      },
    },
  );
  const broker = await startBroker(config, log);
  const client = new OsbClient(broker.url, config.username, config.password);
  return {
    broker,
    client,
    config,
    logs,
    redisUrl: redis.url,
    redisContainer: redis.name,
    async stop() {
      await broker.close();
      await removeEverything(brokerId);
      await redis.stop();
    },
  };
}

/** Last-resort cleanup so a failing test never leaves containers or volumes behind. */
export async function removeEverything(brokerId: string): Promise<void> {
  for (const container of await engine.listContainers({ [LABEL.broker]: brokerId })) await engine.removeContainer(container.name);
  for (const volume of await engine.listVolumes({ [LABEL.broker]: brokerId })) await engine.removeVolume(volume.name);
  // The broker's own Redis has a network of its own; the engine has room for a few dozen such networks only.
  for (const network of await engine.listNetworks({ [LABEL.broker]: brokerId })) await engine.removeNetwork(network.name);
}

export async function brokerObjects(brokerId: string) {
  const containers = await engine.listContainers({ [LABEL.broker]: brokerId, [LABEL.role]: 'instance' });
  const volumes = await engine.listVolumes({ [LABEL.broker]: brokerId, [LABEL.role]: 'instance' });
  return { containers, volumes };
}

/**
 * The broker's keys in Redis that requests made: all of them but the leases of its own periodic work (the pass over
 * deleted instances' backups takes one at start; the usage sampler holds one while there are instances to sample) and
 * the CA for TLS certificates (made at the first start), which no request leaves behind.
 */
export async function keysFromRequests(url: string, brokerId: string): Promise<string[]> {
  const housekeeping = new RegExp(`^osb:${brokerId}:(lease:backup-deleted-pass-|lease:tls-renewal-pass-|lease:engine-stats-|lease:usage-sampler$|tls-ca$)`);
  return (await redisKeys(url, `osb:${brokerId}:*`)).filter((key) => !housekeeping.test(key));
}

export async function redisKeys(url: string, pattern: string): Promise<string[]> {
  const redis = new Redis(url);
  try {
    return await redis.keys(pattern);
  } finally {
    redis.disconnect();
  }
}
