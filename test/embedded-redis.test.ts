import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { LABEL } from '../src/docker/types.js';
import { statePassword } from '../src/embedded-redis.js';
import { inspectRaw, inspectVolume, pgQuery } from './helpers/engine-watch.js';
import { brokerObjects, engine, PG, removeEverything, uniqueId } from './helpers/env.js';
import { OsbClient, provisionBody } from './helpers/osb-client.js';
import { freePort, killAllBrokers, spawnBroker, tempStateDir, type SpawnedBroker } from './helpers/spawn-broker.js';

// Port block 7 (41700-41799). The two tests are one story: first start, then restart.

const brokerId = `e${randomBytes(4).toString('hex')}`;
const stateContainer = `osb-${brokerId}-state`;
const stateDir = tempStateDir();
let env: Record<string, string>;
let first: SpawnedBroker | undefined;
let password = '';
const instanceId = uniqueId();
let cleanupClient: OsbClient | undefined;

test.before(async () => {
  // No REDIS_URL, no BROKER_PASSWORD, no BROKER_ENCRYPTION_KEY: the broker makes all three itself.
  env = {
    PORT: String(await freePort()),
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: '41700-41799',
    BROKER_STATE_DIR: stateDir.dir,
    LOG_LEVEL: 'info',
  };
});

test.after.always(async () => {
  // Deprovision through the API if a broker still runs, then remove whatever is left (state store included).
  if (cleanupClient) {
    const deleting = await cleanupClient.deprovision(instanceId, PG.service, PG.small).catch(() => undefined);
    if (deleting?.status === 202) await cleanupClient.waitForInstance(instanceId, deleting.body.operation, 30_000).catch(() => undefined);
  }
  await killAllBrokers();
  await removeEverything(brokerId);
  stateDir.remove();
});

test.serial('without REDIS_URL the broker runs its own Redis, and prints a generated password once', async (t) => {
  first = await spawnBroker(env);
  cleanupClient = first.client;

  // The generated password: on stderr, once, never in the log; basic auth accepts it.
  t.truthy(first.generatedPassword, first.stderr.join('\n'));
  password = first.generatedPassword!;
  const stderr = first.stderr.join('\n');
  t.regex(stderr, /No BROKER_PASSWORD was set/);
  t.is(stderr.split(password).length - 1, 1, 'printed exactly once');
  t.false(first.stdout.join('\n').includes(password), 'never logged');
  t.is((await first.client.request('GET', '/v2/catalog')).status, 200);
  t.is((await new OsbClient(first.url, 'broker', 'wrong').request('GET', '/v2/catalog')).status, 401);
  const secretsFile = path.join(stateDir.dir, 'secrets.json');
  t.is(statSync(secretsFile).mode & 0o777, 0o600);
  t.is(JSON.parse(readFileSync(secretsFile, 'utf8')).password, password);

  // The state store container: named, labelled, on its own volume and network, loopback only at a fixed port,
  // append-only, password-protected.
  const container = await inspectRaw(stateContainer);
  t.true(container.State.Running);
  t.is(container.Config.Labels[LABEL.broker], brokerId);
  t.is(container.Config.Labels[LABEL.role], 'state');
  const mounts = container.Mounts.map((mount) => ({ type: mount.Type, name: mount.Name, destination: mount.Destination }));
  t.deepEqual(mounts, [{ type: 'volume', name: `${stateContainer}-data`, destination: '/data' }]);
  const volume = await inspectVolume(`${stateContainer}-data`);
  t.is(volume.Labels?.[LABEL.broker], brokerId);
  t.is(volume.Labels?.[LABEL.role], 'state');
  const published = container.NetworkSettings.Ports['6379/tcp'] ?? [];
  t.true(published.length > 0);
  t.deepEqual([...new Set(published.map((binding) => binding.HostIp))], ['127.0.0.1'], JSON.stringify(published));
  t.deepEqual(Object.keys(container.NetworkSettings.Ports), ['6379/tcp'], 'nothing else is published');
  t.is(container.HostConfig.PortBindings['6379/tcp']?.[0]?.HostPort, published[0]!.HostPort, 'the host port is fixed, not picked at each start');
  t.deepEqual(Object.keys(container.NetworkSettings.Networks), [stateContainer], 'on its own network');

  // The password is derived from the generated encryption key: it is in no environment.
  const redisPassword = statePassword(Buffer.from(JSON.parse(readFileSync(secretsFile, 'utf8')).encryptionKey, 'hex'));
  t.false(container.Config.Env.some((entry) => entry.startsWith('REDIS_PASSWORD=')));
  t.false(JSON.stringify(container).includes(redisPassword), 'nor anywhere else in docker inspect');
  const cli = await engine.exec(stateContainer, ['redis-cli', 'CONFIG', 'GET', 'appendonly'], { env: { REDISCLI_AUTH: redisPassword } });
  t.deepEqual(cli.stdout.trim().split('\n'), ['appendonly', 'yes'], cli.stderr);
  const anonymous = await engine.exec(stateContainer, ['redis-cli', 'PING']);
  t.regex(anonymous.stdout + anonymous.stderr, /NOAUTH/, 'Redis asks for the password');

  // The broker keeps its records there.
  const hostPort = Number(published[0]!.HostPort);
  const accepted = await first.client.provision(instanceId, provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  t.is((await first.client.waitForInstance(instanceId, accepted.body.operation, 60_000)).body.state, 'succeeded');
  const redis = new Redis({ host: '127.0.0.1', port: hostPort, password: redisPassword });
  try {
    t.deepEqual(await redis.smembers(`osb:${brokerId}:instances`), [instanceId]);
  } finally {
    redis.disconnect();
  }
});

test.serial('after a restart the instance, its binding and the generated secrets are still there', async (t) => {
  t.truthy(first, 'the first test started the broker');
  const bound = await first!.client.bind(instanceId, 'b-1', { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const credentials = bound.body.credentials;
  const stateId = (await inspectRaw(stateContainer)).Id;

  t.deepEqual(await first!.kill('SIGTERM'), { code: 0, signal: null });
  t.true((await engine.inspectContainer(stateContainer))?.running, 'the state store outlives the broker');

  const second = await spawnBroker(env);
  const client = new OsbClient(second.url, 'broker', password);
  cleanupClient = client;
  t.is(second.generatedPassword, undefined);
  t.false(second.stderr.join('\n').includes('No BROKER_PASSWORD was set'), second.stderr.join('\n'));
  t.false(second.stderr.join('\n').includes(password));
  t.is((await client.request('GET', '/v2/catalog')).status, 200, 'the same generated password still works');
  t.is((await inspectRaw(stateContainer)).Id, stateId, 'the same state store container, not a new one');

  // The instance is known, and its binding's credentials (sealed with the generated key) can still be read and used.
  const fetched = await client.request('GET', `/v2/service_instances/${instanceId}`);
  t.is(fetched.status, 200, JSON.stringify(fetched.body));
  t.is(fetched.body.plan_id, PG.small);
  const binding = await client.request('GET', `/v2/service_instances/${instanceId}/service_bindings/b-1`);
  t.is(binding.status, 200, JSON.stringify(binding.body));
  t.deepEqual(binding.body.credentials, credentials);
  t.is((await pgQuery(credentials.uri, 'SELECT session_user AS who')).rows[0].who, credentials.username);

  const deleting = await client.deprovision(instanceId, PG.service, PG.small);
  t.is(deleting.status, 202);
  t.is((await client.waitForInstance(instanceId, deleting.body.operation, 60_000)).body.state, 'succeeded');
  t.deepEqual(await brokerObjects(brokerId), { containers: [], volumes: [] });
  cleanupClient = undefined;
  await second.kill('SIGTERM');
});
