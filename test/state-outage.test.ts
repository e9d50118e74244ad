import test, { type ExecutionContext } from 'ava';
import Docker from 'dockerode';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { LABEL } from '../src/docker/types.js';
import { stateContainerName, stateImageTag, statePassword } from '../src/embedded-redis.js';
import { inspectRaw, pgQuery, watchContainerCreations } from './helpers/engine-watch.js';
import { engine, removeEverything, uniqueId } from './helpers/env.js';
import { provisionBody, type OsbClient, type Reply } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir, type SpawnedBroker } from './helpers/spawn-broker.js';

// Port block 20 (43000-43099). One broker with its own (embedded) state Redis, which the tests stop, restart and
// pause under it; they run one after the other. The last test starts a second broker over an old-style container.

const docker = new Docker();
const COMMAND_TIMEOUT_MS = 500;
const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const brokerId = `s${randomBytes(4).toString('hex')}`;
const state = stateContainerName(brokerId);
const encryptionKey = hexKey();
const password = statePassword(Buffer.from(encryptionKey, 'hex'));
const stateDir = tempStateDir();
const oldBrokerId = `s${randomBytes(4).toString('hex')}`;
const oldStateDir = tempStateDir();
let broker: SpawnedBroker | undefined;

test.before(async () => {
  broker = await spawnBroker({
    PORT: String(await freePort()),
    BROKER_ID: brokerId,
    BROKER_PASSWORD: 'outage-test',
    BROKER_ENCRYPTION_KEY: encryptionKey,
    BROKER_PORT_RANGE: '43000-43049',
    BROKER_STATE_DIR: stateDir.dir,
    REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
    LOG_LEVEL: 'info',
  });
});

test.after.always(async () => {
  await killAllBrokers();
  // A paused container is removed all the same (forced).
  await removeEverything(brokerId);
  await removeEverything(oldBrokerId);
  stateDir.remove();
  oldStateDir.remove();
});

/** A request and how long its answer took. */
async function timed(request: () => Promise<Reply>): Promise<{ reply: Reply; ms: number }> {
  const started = Date.now();
  const reply = await request();
  return { reply, ms: Date.now() - started };
}

/** Polls until the listing answers 200 (the broker serves again); fails the test after `timeoutMs`. */
async function servesAgain(t: ExecutionContext, client: OsbClient, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: Reply | undefined;
  while (Date.now() < deadline) {
    last = await client.request('GET', '/broker/v1/instances', undefined, { version: null });
    if (last.status === 200) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.fail(`the broker did not serve again within ${timeoutMs} ms: ${last?.status} ${JSON.stringify(last?.body)}`);
}

/** A 503 the OSB way: ServiceUnavailable with a description and a Retry-After of a few seconds. */
function assertUnavailable(t: ExecutionContext, reply: Reply, what: string): void {
  t.is(reply.status, 503, `${what}: ${JSON.stringify(reply.body)}`);
  t.is(reply.body.error, 'ServiceUnavailable', what);
  t.is(typeof reply.body.description, 'string', what);
  const retryAfter = Number(reply.headers.get('retry-after'));
  t.true(retryAfter >= 1 && retryAfter <= 30, `${what}: Retry-After ${reply.headers.get('retry-after')}`);
}

const hostPortOf = async (name: string) => (await inspectRaw(name)).NetworkSettings.Ports['6379/tcp']?.[0]?.HostPort;

test.serial('the state Redis keeps its password out of docker inspect and runs on its own network', async (t) => {
  const raw = await inspectRaw(state);
  const port = await hostPortOf(state);
  t.truthy(port);
  t.is(raw.HostConfig.PortBindings['6379/tcp']?.[0]?.HostPort, port, 'the host port is fixed in the container, not picked at each start');

  // The derived password is the one Redis asks for (so searching for it below means something)...
  const authorised = new Redis({ host: '127.0.0.1', port: Number(port), password, maxRetriesPerRequest: 0 });
  try {
    t.is(await authorised.ping(), 'PONG');
  } finally {
    authorised.disconnect();
  }
  const anonymous = await engine.exec(state, ['redis-cli', 'PING']);
  t.regex(anonymous.stdout + anonymous.stderr, /NOAUTH/, 'without it Redis refuses');
  // ...and it is nowhere in what the engine shows: environment, command, labels, or anything else.
  const everything = JSON.stringify(raw);
  t.false(everything.includes(password), 'the password is not in docker inspect');
  t.false(everything.includes(encodeURIComponent(password)));
  t.false(everything.includes('REDIS_PASSWORD'));

  // Its own labelled network, and no other.
  t.deepEqual(Object.keys(raw.NetworkSettings.Networks), [state]);
  const network = await docker.getNetwork(state).inspect();
  t.is(network.Driver, 'bridge');
  t.is(network.Labels?.[LABEL.broker], brokerId);
  t.is(network.Labels?.[LABEL.role], 'state');
});

test.serial('a restarted state Redis: 503 with Retry-After while it is down, served again afterwards on the same port', async (t) => {
  const client = broker!.client;
  const portBefore = await hostPortOf(state);
  const lastOperation = () => client.request('GET', `/v2/service_instances/${uniqueId()}/last_operation`);
  const listing = () => client.request('GET', '/broker/v1/instances', undefined, { version: null });
  t.is((await listing()).status, 200);
  t.is((await lastOperation()).status, 404, 'an unknown instance while Redis answers');

  await engine.stopContainer(state, 5);
  for (const [what, request] of [
    ['last_operation', lastOperation],
    ['listing', listing],
    ['last_operation again', lastOperation],
  ] as const) {
    const { reply, ms } = await timed(request);
    assertUnavailable(t, reply, what);
    t.log(`Redis stopped: ${what} answered 503 in ${ms} ms`);
    t.true(ms < 2 * COMMAND_TIMEOUT_MS, `${what} answered after ${ms} ms`);
  }
  const page = await client.request('GET', '/dashboard', undefined, { version: null });
  t.is(page.status, 503, 'the dashboard overview too');
  t.regex(String(page.headers.get('content-type')), /text\/html/);
  t.truthy(page.headers.get('retry-after'));
  t.is((await client.request('GET', '/v2/catalog')).status, 200, 'the catalog is served from memory');

  await engine.startContainer(state);
  const restarted = Date.now();
  await servesAgain(t, client);
  t.log(`served again ${Date.now() - restarted} ms after the start of the state container`);
  t.is((await lastOperation()).status, 404);
  t.is(await hostPortOf(state), portBefore, 'the same host port after stop and start');

  // `docker restart` (what the engine's restart policy does, too) is no different.
  await docker.getContainer(state).restart({ t: 5 });
  await servesAgain(t, client);
  t.is(await hostPortOf(state), portBefore, 'the same host port after a restart');

  // The log: one warning for the outage and one line for its end; no stack for any request.
  const logs = broker!.logs();
  t.true(logs.some((record) => /went away/.test(record.msg)));
  t.true(logs.some((record) => /answers again/.test(record.msg)));
  t.is(logs.filter((record) => /answering 503/.test(record.msg)).length, 1, 'one warning, not one per request');
  t.deepEqual(
    logs.filter((record) => record.level >= 50 || record.err?.stack),
    [],
  );
  t.false(broker!.stdout.join('\n').includes(password), 'the password is never logged');
});

test.serial('a hung state Redis (paused) gives 503 within the command time-out, and service comes back after unpause', async (t) => {
  const client = broker!.client;
  await servesAgain(t, client);
  await docker.getContainer(state).pause();
  try {
    const lastOperation = await timed(() => client.request('GET', `/v2/service_instances/${uniqueId()}/last_operation`));
    assertUnavailable(t, lastOperation.reply, 'last_operation');
    t.log(`Redis paused: last_operation answered 503 in ${lastOperation.ms} ms`);
    t.true(lastOperation.ms < 2 * COMMAND_TIMEOUT_MS, `last_operation answered after ${lastOperation.ms} ms`);

    // A provision waits for the instance lock in Redis: a 503 too, not a hang or a ConcurrencyError.
    const provision = await timed(() => client.provision(uniqueId(), provisionBody(REDIS.service, REDIS.small)));
    assertUnavailable(t, provision.reply, 'provision');
    t.log(`Redis paused: provision answered 503 in ${provision.ms} ms`);
    t.true(provision.ms < 2 * COMMAND_TIMEOUT_MS, `provision answered after ${provision.ms} ms`);

    const details = await client.request('GET', `/dashboard/instances/${uniqueId()}/api/details`, undefined, { version: null });
    t.is(details.status, 401, 'the dashboard checks its token before it needs Redis');
  } finally {
    await docker.getContainer(state).unpause();
  }
  await servesAgain(t, client);
  t.is((await client.request('GET', `/v2/service_instances/${uniqueId()}/last_operation`)).status, 404);
});

test.serial('an instance container cannot reach the state Redis; the broker can', async (t) => {
  const client = broker!.client;
  const id = uniqueId();
  const accepted = await client.provision(id, provisionBody(REDIS.service, REDIS.small));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  t.is((await client.waitForInstance(id, accepted.body.operation, 120_000)).body.state, 'succeeded');
  const [instance] = await engine.listContainers({ [LABEL.broker]: brokerId, [LABEL.instance]: id });
  t.truthy(instance);

  const raw = await inspectRaw(state);
  const stateIp = raw.NetworkSettings.Networks[state]!.IPAddress;
  const gateway = (await inspectRaw(instance!.name)).NetworkSettings.Networks.bridge?.Gateway;
  t.truthy(stateIp);
  t.truthy(gateway, 'the instance is on the default bridge');
  const probe = (target: string) => ['timeout', '3', 'bash', '-c', `exec 3<>/dev/tcp/${target} && echo connected`];

  // The probe works: inside the state container its own address answers, and inside the instance its own server.
  const itself = await engine.exec(state, probe(`${stateIp}/6379`));
  t.is(itself.exitCode, 0, itself.stderr);
  const own = await engine.exec(instance!.name, probe('127.0.0.1/6379'));
  t.is(own.exitCode, 0, own.stderr);

  // From the instance: neither the state container's address nor the state Redis's host port through the gateway.
  const direct = await engine.exec(instance!.name, probe(`${stateIp}/6379`));
  t.not(direct.exitCode, 0, direct.stdout);
  t.notRegex(direct.stdout, /connected/);
  const published = await engine.exec(instance!.name, probe(`${gateway}/${await hostPortOf(state)}`));
  t.not(published.exitCode, 0, published.stdout);

  // Meanwhile the broker reads and writes its state as ever.
  const listed = await client.request('GET', '/broker/v1/instances', undefined, { version: null });
  t.is(listed.status, 200);
  t.deepEqual(
    listed.body.instances.map((entry: { id: string }) => entry.id),
    [id],
  );
  const deleting = await client.deprovision(id, REDIS.service, REDIS.small);
  t.is(deleting.status, 202);
  t.is((await client.waitForInstance(id, deleting.body.operation, 60_000)).body.state, 'succeeded');
});

test.serial('a provision interrupted by a state Redis outage continues once it is back, with one container, and no broker restart', async (t) => {
  const client = broker!.client;
  const PG = { service: 'd0fc228f-54d1-4bed-8dd0-38c7a33c4500', small: 'fdc3b78d-156f-4bac-aba4-242250cc5840' };
  const id = uniqueId();
  const creations = await watchContainerCreations({ [LABEL.broker]: brokerId, [LABEL.instance]: id });
  const accepted = await client.provision(id, provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const operation = accepted.body.operation as string;
  // Redis goes away while the container is being made: the provision's next write fails.
  for (;;) {
    const reply = await client.lastOperation(id, operation);
    if (/Creating|Starting/.test(String(reply.body.description))) break;
    t.is(reply.body.state, 'in progress', JSON.stringify(reply.body));
  }
  await engine.stopContainer(state, 5);
  assertUnavailable(t, await client.lastOperation(id, operation), 'last_operation during the outage');
  await broker!.waitForLog((record) => /continues once it does/.test(record.msg) && record.operation === operation, 15_000);
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  await engine.startContainer(state);
  await servesAgain(t, client);

  const done = await client.waitForInstance(id, operation, 90_000);
  t.deepEqual(done.body, { state: 'succeeded', description: 'The service instance is ready.' });
  t.is((await creations.stop()).length, 1, 'the container made before the outage was adopted, not destroyed and made again');
  // A platform retries a ConcurrencyError; on a loaded machine a lock taken around the outage can still be held
  // for its last seconds. The wait is logged so a lock held too long shows.
  const bindStarted = Date.now();
  const bound = await waitUntil(
    'the bind to be answered with something else than 422 ConcurrencyError',
    async () => {
      const reply = await client.bind(id, 'b-1', { service_id: PG.service, plan_id: PG.small });
      return reply.status === 422 && reply.body.error === 'ConcurrencyError' ? undefined : reply;
    },
    60_000,
    500,
  );
  t.log(`bound ${Date.now() - bindStarted} ms after the provision succeeded`);
  t.is(bound.status, 201, JSON.stringify(bound.body));
  t.is((await pgQuery(bound.body.credentials.uri, 'SELECT 1 AS one')).rows[0].one, 1);
  const deleting = await client.deprovision(id, PG.service, PG.small);
  t.is((await client.waitForInstance(id, deleting.body.operation, 60_000)).body.state, 'succeeded');
  t.true(broker!.logs().some((record) => record.msg === 'the state store answers again; continuing the operation' && record.operation === operation));
});

test.serial('a state container of an older version is replaced at start and its data kept', async (t) => {
  // As older versions made it: host port picked at each start, password in the environment, default bridge.
  const name = stateContainerName(oldBrokerId);
  const labels = { [LABEL.broker]: oldBrokerId, [LABEL.role]: 'state' };
  await engine.ensureVolume(`${name}-data`, labels);
  await engine.createContainer({
    name,
    image: stateImageTag(process.env.BROKER_IMAGE_PREFIX || 'osb-broker/'),
    labels,
    env: ['REDIS_PASSWORD=an-old-password'],
    publish: [{ containerPort: 6379, hostIp: '127.0.0.1', hostPort: 0 }],
    volume: { name: `${name}-data`, path: '/data' },
  });
  await engine.startContainer(name);
  const oldId = (await inspectRaw(name)).Id;
  const marker = `osb:${oldBrokerId}:marker`;
  const wrote = await waitForExec(name, ['redis-cli', 'SET', marker, 'kept']);
  t.is(wrote.stdout.trim(), 'OK', wrote.stderr);

  const key = hexKey();
  const second = await spawnBroker({
    PORT: String(await freePort()),
    BROKER_ID: oldBrokerId,
    BROKER_PASSWORD: 'outage-test',
    BROKER_ENCRYPTION_KEY: key,
    BROKER_PORT_RANGE: '43050-43099',
    BROKER_STATE_DIR: oldStateDir.dir,
    LOG_LEVEL: 'info',
  });
  t.is((await second.client.request('GET', '/broker/v1/instances', undefined, { version: null })).status, 200);
  await second.waitForLog((record) => /replacing the state store container/.test(record.msg));

  const raw = await inspectRaw(name);
  t.not(raw.Id, oldId, 'a new container');
  t.false(JSON.stringify(raw).includes('an-old-password'));
  t.false(raw.Config.Env.some((entry: string) => entry.startsWith('REDIS_PASSWORD=')));
  t.deepEqual(Object.keys(raw.NetworkSettings.Networks), [name]);
  t.truthy(raw.HostConfig.PortBindings['6379/tcp']?.[0]?.HostPort);
  const redis = new Redis({
    host: '127.0.0.1',
    port: Number(await hostPortOf(name)),
    password: statePassword(Buffer.from(key, 'hex')),
    maxRetriesPerRequest: 0,
  });
  try {
    t.is(await redis.get(marker), 'kept', 'the data volume came along');
  } finally {
    redis.disconnect();
  }
  await second.kill('SIGTERM');
});

/** Runs a command in a container that has just started, trying again while its server still boots. */
async function waitForExec(container: string, cmd: string[]) {
  for (let attempt = 0; ; attempt++) {
    const result = await engine.exec(container, cmd);
    if ((result.exitCode === 0 && !/Could not connect|LOADING/.test(result.stdout + result.stderr)) || attempt >= 50) return result;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
