import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { PACKAGE_ROOT } from '../src/config.js';
import { LABEL } from '../src/docker/types.js';
import { stopAllWatchers, watchContainerCreations } from './helpers/engine-watch.js';
import { brokerObjects, removeEverything, startTestRedis, uniqueId } from './helpers/env.js';
import { provisionBody, type OsbClient } from './helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir, type SpawnedBroker } from './helpers/spawn-broker.js';
import { storedRecord, waitUntil } from './helpers/wait.js';
import { catalogCopy, offeringIds } from './helpers/catalog.js';

// Several broker processes of one BROKER_ID on one Redis, as replicas behind a load balancer, run as real processes.
// The offering is a copy of the Redis one whose bind script takes two seconds longer, so a signal can land while a
// bind runs. Port block 25 (43500-43599), split between the tests.
const prefix = `osb-replicas-test-${process.pid}/`;
let redis: Awaited<ReturnType<typeof startTestRedis>>;
let catalogDir: string;
let offering: { service: string; plan: string };
const brokerIds: string[] = [];
const stateDirs: Array<{ remove(): void }> = [];

function slowBindCatalog(): string {
  offering = offeringIds('redis');
  return catalogCopy('redis', {
    files: (folder) => {
      renameSync(path.join(folder, 'scripts', 'bind'), path.join(folder, 'scripts', 'bind-now'));
      writeFileSync(path.join(folder, 'scripts', 'bind'), '#!/usr/bin/env bash\nsleep 2\nexec "$(dirname "$(readlink -f "$0")")/bind-now"\n', { mode: 0o755 });
    },
  });
}

test.before(async () => {
  redis = await startTestRedis();
  catalogDir = slowBindCatalog();
});

test.after.always(async () => {
  stopAllWatchers();
  await killAllBrokers();
  for (const brokerId of brokerIds) await removeEverything(brokerId);
  await redis?.stop();
  for (const dir of stateDirs) dir.remove();
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${prefix}redis:7.0.2`], { stdio: 'ignore' });
  } catch {
    // Never built.
  }
});

/** The shared environment of one broker's replicas; each replica gets its own PORT. */
function replicaEnv(portRange: string, lease = '3'): Record<string, string> {
  const brokerId = `p${randomBytes(4).toString('hex')}`;
  brokerIds.push(brokerId);
  const state = tempStateDir();
  stateDirs.push(state);
  return {
    BROKER_PASSWORD: 'replica-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    REDIS_URL: redis.url,
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: portRange,
    BROKER_STATE_DIR: state.dir,
    BROKER_CATALOG_DIR: catalogDir,
    BROKER_IMAGE_PREFIX: prefix,
    BROKER_LEASE_SECONDS: lease,
    BROKER_SWEEP_SECONDS: '1',
    LOG_LEVEL: 'info',
  };
}

async function replica(env: Record<string, string>): Promise<SpawnedBroker> {
  return spawnBroker({ ...env, PORT: String(await freePort()) });
}

/** Runs `node dist/src/main.js` with `env` until it exits by itself (within a minute). */
function runToExit(env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'dist/src/main.js')], { env: { ...process.env, ...env }, cwd: PACKAGE_ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`still running after a minute:\n${stderr}`));
    }, 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const bindBody = () => ({ service_id: offering.service, plan_id: offering.plan, bind_resource: { app_guid: 'app-1' } });

async function assertRedisWorks(t: import('ava').ExecutionContext, uri: string): Promise<void> {
  const client = new Redis(uri, { maxRetriesPerRequest: 1 });
  try {
    await client.set('k', 'v');
    t.is(await client.get('k'), 'v');
  } finally {
    client.disconnect();
  }
}

async function deprovisionAndWait(t: import('ava').ExecutionContext, client: OsbClient, id: string): Promise<void> {
  const deleting = await client.deprovision(id, offering.service, offering.plan);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  t.is((await client.waitForInstance(id, deleting.body.operation, 60_000)).body.state, 'succeeded');
}

test('a replica killed in the middle of a provision: another finishes it, with one container, and serves it', async (t) => {
  const env = replicaEnv('43500-43519');
  const [a, b] = [await replica(env), await replica(env)];
  const id = uniqueId();
  const creations = await watchContainerCreations({ [LABEL.broker]: env.BROKER_ID!, [LABEL.instance]: id });

  const accepted = await a.client.provision(id, provisionBody(offering.service, offering.plan));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const operation = accepted.body.operation as string;
  await waitUntil(
    'the container to start',
    async () => /^(Starting|Setting up|Checking)/.test((await storedRecord(redis.url, env.BROKER_ID!, 'operation', operation))?.description ?? ''),
    60_000,
    5,
  );
  const killedAt = Date.now();
  t.is((await a.kill('SIGKILL')).signal, 'SIGKILL');

  const taken = await b.waitForLog((record) => record.msg === 'continuing an operation nobody holds' && record.operation === operation, 20_000);
  t.log(`taken over ${Date.parse(taken.time as string) - killedAt} ms after the kill (lease 3 s, sweep every 1 s)`);
  const done = await b.client.waitForInstance(id, operation, 60_000);
  t.deepEqual(done.body, { state: 'succeeded', description: 'The service instance is ready.' });
  t.is((await creations.stop()).length, 1, 'the replica adopted the container the killed one had made');

  const bound = await b.client.request('PUT', `/v2/service_instances/${id}/service_bindings/b-1`, bindBody());
  t.is(bound.status, 201, JSON.stringify(bound.body));
  await assertRedisWorks(t, bound.body.credentials.uri as string);
  await deprovisionAndWait(t, b.client, id);
  t.deepEqual(await brokerObjects(env.BROKER_ID!), { containers: [], volumes: [] });
  await b.kill('SIGTERM');
});

test('a second process started by mistake with the same id and port never touches live work', async (t) => {
  const env = replicaEnv('43520-43539', '30');
  const a = await spawnBroker({ ...env, PORT: String(await freePort()) });
  const id = uniqueId();
  const creations = await watchContainerCreations({ [LABEL.broker]: env.BROKER_ID!, [LABEL.instance]: id });
  const accepted = await a.client.provision(id, provisionBody(offering.service, offering.plan));
  t.is(accepted.status, 202);

  // Same everything, PORT included: it recovers, then cannot listen and exits, having changed nothing.
  const mistaken = await runToExit({ ...env, PORT: new URL(a.url).port });
  t.is(mistaken.code, 1);
  t.regex(mistaken.stderr, /already in use/);
  t.notRegex(mistaken.stdout, /continuing an operation/);

  // And one on another port: a live replica now, but the running provision stays with its owner.
  const b = await replica(env);
  const done = await a.client.waitForInstance(id, accepted.body.operation, 60_000);
  t.is(done.body.state, 'succeeded');
  t.false(
    b.logs().some((record) => record.msg === 'continuing an operation nobody holds'),
    'the second replica took no live work',
  );
  t.is((await creations.stop()).length, 1);
  await deprovisionAndWait(t, b.client, id);
  await Promise.all([a.kill('SIGTERM'), b.kill('SIGTERM')]);
});

test('SIGTERM: a synchronous bind in flight is still answered, and a running provision is handed to the other replica at once', async (t) => {
  // A long lease: only the hand-back (not its lapse) lets the other replica continue within the test's time.
  const env = replicaEnv('43540-43559', '120');
  const [a, b] = [await replica(env), await replica(env)];
  const ready = uniqueId();
  const accepted = await a.client.provision(ready, provisionBody(offering.service, offering.plan));
  t.is((await a.client.waitForInstance(ready, accepted.body.operation, 60_000)).body.state, 'succeeded');

  // The bind script takes two seconds; SIGTERM lands after half a second, together with a fresh provision.
  const binding = a.client.request('PUT', `/v2/service_instances/${ready}/service_bindings/b-1`, bindBody());
  const pending = uniqueId();
  const provision = await a.client.provision(pending, provisionBody(offering.service, offering.plan));
  t.is(provision.status, 202);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const exited = a.kill('SIGTERM');

  const bound = await binding;
  t.is(bound.status, 201, JSON.stringify(bound.body));
  await assertRedisWorks(t, bound.body.credentials.uri as string);
  t.deepEqual(await exited, { code: 0, signal: null });
  t.true(a.logs().some((record) => record.msg === 'operation handed back' && record.operation === provision.body.operation));

  await b.waitForLog((record) => record.msg === 'continuing an operation nobody holds' && record.operation === provision.body.operation, 20_000);
  t.is((await b.client.waitForInstance(pending, provision.body.operation, 60_000)).body.state, 'succeeded');
  await deprovisionAndWait(t, b.client, pending);
  await deprovisionAndWait(t, b.client, ready);
  await b.kill('SIGTERM');
});
