import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { LABEL } from '../src/docker/types.js';
import { stateImageTag } from '../src/embedded-redis.js';
import { pgQuery, stopAllWatchers, watchContainerCreations } from './helpers/engine-watch.js';
import { brokerObjects, engine, PG, redisKeys, removeEverything, startTestRedis, uniqueId } from './helpers/env.js';
import { provisionBody, type OsbClient } from './helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir } from './helpers/spawn-broker.js';
import { storedRecord, waitUntil } from './helpers/wait.js';

// Port block 5 (41500-41599), split between the tests of this file so they can run side by side.

let redis: Awaited<ReturnType<typeof startTestRedis>>;
const brokerIds: string[] = [];
const stateDirs: Array<{ remove(): void }> = [];
const strayContainers: string[] = [];

test.before(async () => {
  redis = await startTestRedis();
});

test.after.always(async () => {
  stopAllWatchers();
  await killAllBrokers();
  for (const name of strayContainers) await engine.removeContainer(name);
  for (const brokerId of brokerIds) await removeEverything(brokerId);
  await redis?.stop();
  for (const dir of stateDirs) dir.remove();
});

/** The environment of one broker: its own id, state folder and share of the port block. */
async function brokerEnv(portRange: string): Promise<Record<string, string>> {
  const brokerId = `r${randomBytes(4).toString('hex')}`;
  brokerIds.push(brokerId);
  const state = tempStateDir();
  stateDirs.push(state);
  return {
    PORT: String(await freePort()),
    BROKER_PASSWORD: 'recovery-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    REDIS_URL: redis.url,
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: portRange,
    BROKER_STATE_DIR: state.dir,
    // The killed process's lease lapses after this; the next one continues its operations then.
    BROKER_LEASE_SECONDS: '3',
    BROKER_SWEEP_SECONDS: '1',
    LOG_LEVEL: 'info',
  };
}

const bindBody = { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } };

async function provisionAndWait(t: ExecutionContext, client: OsbClient, id: string): Promise<void> {
  const accepted = await client.provision(id, provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await client.waitForInstance(id, accepted.body.operation, 60_000);
  t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
}

/** Deprovisions and checks that no container, volume, port reservation or binding record is left. */
async function deprovisionAndCheckNothingLeft(t: ExecutionContext, client: OsbClient, brokerId: string, id: string): Promise<void> {
  const deleting = await client.deprovision(id, PG.service, PG.small);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  const deleted = await client.waitForInstance(id, deleting.body.operation, 60_000);
  t.is(deleted.body.state, 'succeeded', JSON.stringify(deleted.body));
  await assertNothingLeft(t, brokerId);
}

async function assertNothingLeft(t: ExecutionContext, brokerId: string): Promise<void> {
  t.deepEqual(await brokerObjects(brokerId), { containers: [], volumes: [] });
  t.deepEqual(await redisKeys(redis.url, `osb:${brokerId}:port:*`), []);
  t.deepEqual(await redisKeys(redis.url, `osb:${brokerId}:binding:*`), []);
}

const provisionKilled = test.macro({
  async exec(t, killPoint: 'right after the 202' | 'once its container runs', portRange: string) {
    const env = await brokerEnv(portRange);
    const brokerId = env.BROKER_ID!;
    const id = uniqueId();
    const creations = await watchContainerCreations({ [LABEL.broker]: brokerId, [LABEL.instance]: id });

    const first = await spawnBroker(env);
    const accepted = await first.client.provision(id, provisionBody(PG.service, PG.small, { parameters: { database: 'orders' } }));
    t.is(accepted.status, 202, JSON.stringify(accepted.body));
    const operation = accepted.body.operation as string;
    if (killPoint === 'once its container runs') {
      // The operation's own progress says when the container has started (setup still takes most of a second).
      await waitUntil(
        'the instance container to start',
        async () => /^(Starting|Setting up)/.test((await storedRecord(redis.url, brokerId, 'operation', operation))?.description ?? ''),
        30_000,
        5,
      );
    }
    t.is((await first.kill('SIGKILL')).signal, 'SIGKILL');
    // The killed process left the operation unfinished.
    t.is((await storedRecord(redis.url, brokerId, 'operation', operation))?.state, 'in progress');

    const second = await spawnBroker(env);
    const recovered = await second.waitForLog((record) => record.msg === 'recovery done');
    t.is(recovered.unfinished, 1);
    await second.waitForLog((record) => record.msg === 'continuing an operation nobody holds' && record.operation === operation, 20_000);

    const done = await second.client.waitForInstance(id, operation, 60_000);
    t.is(done.status, 200);
    t.deepEqual(done.body, { state: 'succeeded', description: 'The service instance is ready.' });
    const fetched = await second.client.request('GET', `/v2/service_instances/${id}`);
    t.is(fetched.status, 200, JSON.stringify(fetched.body));
    t.is(fetched.body.parameters.database, 'orders');

    // One container, ever: the resumed provision adopted what the killed one had made.
    t.is((await creations.stop()).length, 1);
    const { containers, volumes } = await brokerObjects(brokerId);
    t.is(containers.length, 1);
    t.is(volumes.length, 1);
    t.true(containers[0]!.running);
    t.deepEqual(await redisKeys(redis.url, `osb:${brokerId}:port:*`), [`osb:${brokerId}:port:${containers[0]!.hostPort}`]);

    // The instance works.
    const bound = await second.client.bind(id, 'b-1', bindBody);
    t.is(bound.status, 201, JSON.stringify(bound.body));
    const { rows } = await pgQuery(bound.body.credentials.uri, 'SELECT session_user AS who, current_database() AS db');
    t.deepEqual(rows[0], { who: bound.body.credentials.username, db: 'orders' });

    await deprovisionAndCheckNothingLeft(t, second.client, brokerId, id);
    await second.kill('SIGTERM');
  },
  title: (_provided, killPoint) => `a provision killed ${String(killPoint)} resumes at the next start and succeeds`,
});

test(provisionKilled, 'right after the 202', '41500-41519');
test(provisionKilled, 'once its container runs', '41520-41539');

test('containers and volumes no instance owns are reported, and removed only with BROKER_REMOVE_ORPHANS=true', async (t) => {
  const env = await brokerEnv('41540-41559');
  const brokerId = env.BROKER_ID!;

  // A real instance first: its container must never be taken for an orphan.
  let broker = await spawnBroker(env);
  const id = uniqueId();
  await provisionAndWait(t, broker.client, id);
  await broker.kill('SIGTERM');

  // Objects labelled as this broker's instances, for an instance it never heard of.
  const orphanId = uniqueId('orphan');
  const orphan = `osb-${brokerId}-${orphanId}`;
  const labels = { [LABEL.broker]: brokerId, [LABEL.role]: 'instance', [LABEL.instance]: orphanId };
  await engine.ensureVolume(`${orphan}-data`, labels);
  await engine.createContainer({ name: orphan, image: stateImageTag('osb-broker/'), labels, volume: { name: `${orphan}-data`, path: '/data' } });
  await engine.startContainer(orphan);
  // The same, but another broker's: none of this broker's business.
  const foreign = `osb-x${randomBytes(4).toString('hex')}-${orphanId}`;
  strayContainers.push(foreign);
  await engine.createContainer({ name: foreign, image: stateImageTag('osb-broker/'), labels: { ...labels, [LABEL.broker]: 'someone-else' } });

  broker = await spawnBroker(env);
  const reported = await broker.waitForLog((record) => record.msg?.includes('no instance owns'));
  t.is(reported.level, 40, 'logged as a warning');
  t.deepEqual(reported.containers, [orphan]);
  t.deepEqual(reported.volumes, [`${orphan}-data`]);
  t.false(reported.removed);
  t.regex(reported.msg, /BROKER_REMOVE_ORPHANS=true/);
  t.true((await engine.inspectContainer(orphan))?.running, 'reported orphans stay');
  t.true(await engine.volumeExists(`${orphan}-data`));
  await broker.kill('SIGTERM');

  broker = await spawnBroker({ ...env, BROKER_REMOVE_ORPHANS: 'true' });
  const removed = await broker.waitForLog((record) => record.msg?.includes('no instance owns'));
  t.deepEqual(removed.containers, [orphan]);
  t.deepEqual(removed.volumes, [`${orphan}-data`]);
  t.true(removed.removed);
  t.is(await engine.inspectContainer(orphan), undefined);
  t.false(await engine.volumeExists(`${orphan}-data`));
  t.truthy(await engine.inspectContainer(foreign), "another broker's container is left alone");

  // The real instance survived the clean-up and still works.
  const { containers, volumes } = await brokerObjects(brokerId);
  t.deepEqual(
    containers.map((container) => container.labels[LABEL.instance]),
    [id],
  );
  t.deepEqual(
    volumes.map((volume) => volume.labels[LABEL.instance]),
    [id],
  );
  t.is((await broker.client.request('GET', `/v2/service_instances/${id}`)).status, 200);
  const bound = await broker.client.bind(id, 'b-1', bindBody);
  t.is(bound.status, 201, JSON.stringify(bound.body));
  t.is((await pgQuery(bound.body.credentials.uri, 'SELECT 1 AS one')).rows[0].one, 1);

  await deprovisionAndCheckNothingLeft(t, broker.client, brokerId, id);
  await broker.kill('SIGTERM');
});

test('a deprovision killed right after the 202 resumes at the next start and removes everything', async (t) => {
  const env = await brokerEnv('41560-41579');
  const brokerId = env.BROKER_ID!;
  const id = uniqueId();

  const first = await spawnBroker(env);
  await provisionAndWait(t, first.client, id);
  t.is((await first.client.bind(id, 'b-1', bindBody)).status, 201);
  const containerName = (await brokerObjects(brokerId)).containers[0]!.name;

  const deleting = await first.client.deprovision(id, PG.service, PG.small);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  const operation = deleting.body.operation as string;
  t.is((await first.kill('SIGKILL')).signal, 'SIGKILL');
  t.is((await storedRecord(redis.url, brokerId, 'operation', operation))?.state, 'in progress');

  const second = await spawnBroker(env);
  await second.waitForLog((record) => record.msg === 'continuing an operation nobody holds' && record.operation === operation, 20_000);
  const done = await second.client.waitForInstance(id, operation, 60_000);
  t.deepEqual(done.body, { state: 'succeeded', description: 'The service instance is deleted.' });

  await assertNothingLeft(t, brokerId);
  t.is(await engine.inspectContainer(containerName), undefined);
  t.is((await second.client.request('GET', `/v2/service_instances/${id}`)).status, 404);
  t.is((await second.client.deprovision(id, PG.service, PG.small)).status, 410);
  await second.kill('SIGTERM');
});
