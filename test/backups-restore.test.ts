// Restores that work and restores that fail cleanly, against the real engine with the real PostgreSQL client:
// clone_of, in-place restore (old data back, existing bindings keep working, the instance locked meanwhile), import,
// a damaged backup, another offering's dump and another encryption key, and a broker killed mid-restore.
// Port block 40 for the in-process broker; block 45 for the second broker (45500-45549) and the spawned ones (45550-45599).
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Config } from '../src/config.js';
import { LABEL } from '../src/docker/types.js';
import { brokerObjects, engine, PG, redisKeys, removeEverything, startTestBroker, startTestRedis, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody, type OsbClient } from './helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir } from './helpers/spawn-broker.js';
import { storedRecord, waitUntil } from './helpers/wait.js';

const retention = { keepLast: 7, keepDays: 7, keepDeletedDays: 30 };
let env: TestBroker;
let dir: string;
const cleanups: Array<() => Promise<void> | void> = [];

test.before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'osb-restores-'));
  env = await startTestBroker(40, { backup: { store: { kind: 'local', dir }, retention } } as Partial<Config>);
});
test.after.always(async () => {
  await killAllBrokers();
  for (const cleanup of cleanups.reverse()) await cleanup();
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const api = (client: OsbClient, method: string, path: string, body?: unknown) => client.request(method, path, body, { version: null });

async function provisioned(client: OsbClient, id: string, extra: Record<string, unknown> = {}, space = 'space-1') {
  const accepted = await client.provision(id, { ...provisionBody(PG.service, PG.small, extra), space_guid: space });
  if (accepted.status !== 202) throw new Error(`provision: ${accepted.status} ${JSON.stringify(accepted.body)}`);
  return client.waitForInstance(id, accepted.body.operation);
}

async function bind(client: OsbClient, id: string): Promise<string> {
  const bound = await client.bind(id, uniqueId('b'), { service_id: PG.service, plan_id: PG.small });
  if (bound.status !== 201) throw new Error(`bind: ${bound.status} ${JSON.stringify(bound.body)}`);
  return bound.body.credentials.uri as string;
}

async function query(uri: string, sql: string): Promise<any[]> {
  const client = new pg.Client({ connectionString: uri });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

const contents = (uri: string) => query(uri, 'SELECT count(*)::int AS n, min(item) AS first FROM orders');

async function backUp(client: OsbClient, id: string) {
  const started = await api(client, 'POST', `/broker/v1/instances/${id}/backups`);
  if (started.status !== 202) throw new Error(`backup: ${started.status} ${JSON.stringify(started.body)}`);
  return waitUntil(
    `backup ${started.body.id} to end`,
    async () => {
      const listed = await api(client, 'GET', `/broker/v1/instances/${id}/backups`);
      const backup = listed.body.backups.find((candidate: any) => candidate.id === started.body.id);
      return backup?.state !== 'in progress' ? backup : undefined;
    },
    120_000,
    200,
  );
}

/** POST .../restore; the 202's operation followed through OSB last_operation to its end. */
async function restoreInPlace(client: OsbClient, id: string, body: Record<string, unknown>) {
  const accepted = await api(client, 'POST', `/broker/v1/instances/${id}/restore`, body);
  if (accepted.status !== 202) throw new Error(`restore: ${accepted.status} ${JSON.stringify(accepted.body)}`);
  return { operation: accepted.body.operation as string, done: () => client.waitForInstance(id, accepted.body.operation) };
}

async function instanceVolumes(brokerId: string, id: string) {
  return (await brokerObjects(brokerId)).volumes.filter((volume) => volume.labels[LABEL.instance] === id);
}

test.serial('clone_of copies a live PostgreSQL; another space is refused exactly like an unknown instance', async (t) => {
  const source = uniqueId('src');
  t.is((await provisioned(env.client, source)).body.state, 'succeeded');
  const sourceUri = await bind(env.client, source);
  await query(sourceUri, "CREATE TABLE orders AS SELECT g AS id, 'item-' || g AS item FROM generate_series(1, 1000) g");

  const copy = uniqueId('copy');
  const cloned = await provisioned(env.client, copy, { parameters: { clone_of: source } });
  t.is(cloned.body.state, 'succeeded', cloned.body.description);
  const copyUri = await bind(env.client, copy);
  t.deepEqual(await contents(copyUri), [{ n: 1000, first: 'item-1' }]);
  // A copy, not a shared volume: writes to it leave the source alone.
  await query(copyUri, 'DELETE FROM orders');
  t.deepEqual(await contents(sourceUri), [{ n: 1000, first: 'item-1' }]);
  // The clone's backup is one of the source's, like any made on demand.
  const listed = await api(env.client, 'GET', `/broker/v1/instances/${source}/backups`);
  t.is(listed.body.backups.length, 1);
  t.is(listed.body.backups[0].state, 'succeeded');

  const otherSpace = await env.client.provision(uniqueId('x'), {
    ...provisionBody(PG.service, PG.small, { parameters: { clone_of: source } }),
    space_guid: 'space-2',
  });
  const unknown = await env.client.provision(uniqueId('x'), provisionBody(PG.service, PG.small, { parameters: { clone_of: 'no-such-instance' } }));
  t.is(otherSpace.status, 400);
  t.deepEqual(otherSpace.body, unknown.body, 'the refusal does not tell whether the other instance exists');
  t.regex(otherSpace.body.description, /^clone_of does not name an instance/);
  const both = await env.client.provision(
    uniqueId('x'),
    provisionBody(PG.service, PG.small, { parameters: { clone_of: source, restore_from: { instance: source, backup: 'latest' } } }),
  );
  t.is(both.status, 400);
  t.regex(both.body.description, /restore_from and clone_of cannot be used together/);
  // Provision-only: an update naming a source is refused, and one that does not still works on the clone.
  const update = await env.client.request('PATCH', `/v2/service_instances/${copy}?accepts_incomplete=true`, {
    service_id: PG.service,
    parameters: { clone_of: source },
  });
  t.is(update.status, 400);
  t.regex(update.body.description, /clone_of is taken at provision only/);
});

test.serial('in-place restore: the old data is back, a binding made before still connects, and the instance is locked meanwhile', async (t) => {
  const id = uniqueId('inp');
  t.is((await provisioned(env.client, id)).body.state, 'succeeded');
  const uri = await bind(env.client, id);
  await query(uri, "CREATE TABLE orders AS SELECT g AS id, 'old-' || g AS item FROM generate_series(1, 500) g");
  const backup = await backUp(env.client, id);
  t.is(backup.state, 'succeeded', backup.description);
  await query(uri, "DELETE FROM orders; INSERT INTO orders VALUES (1, 'new-1')");
  t.deepEqual(await contents(uri), [{ n: 1, first: 'new-1' }]);

  const restore = await restoreInPlace(env.client, id, { backup: backup.id });
  // Locked while it runs, as for any instance operation: bind, update and deprovision get 422 ConcurrencyError.
  const bindDuring = await env.client.bind(id, uniqueId('b'), { service_id: PG.service, plan_id: PG.small });
  const updateDuring = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: PG.service,
    plan_id: PG.medium,
  });
  const deleteDuring = await env.client.deprovision(id, PG.service, PG.small);
  const secondRestore = await api(env.client, 'POST', `/broker/v1/instances/${id}/restore`, { backup: 'latest' });
  const progress = await env.client.lastOperation(id, restore.operation);
  t.is(progress.body.state, 'in progress', 'the checks above ran while the restore did');
  for (const during of [bindDuring, updateDuring, deleteDuring, secondRestore]) {
    t.is(during.status, 422, JSON.stringify(during.body));
    t.is(during.body.error, 'ConcurrencyError');
  }

  const done = await restore.done();
  t.deepEqual(done.body, { state: 'succeeded', description: `Restored backup ${backup.id} of instance ${id}; the instance runs on it.` });
  t.deepEqual(await contents(uri), [{ n: 500, first: 'old-1' }], 'the binding from before the restore reads the restored data');
  t.deepEqual(await contents(await bind(env.client, id)), [{ n: 500, first: 'old-1' }]);
  // One volume: the one from before is gone.
  t.is((await instanceVolumes(env.config.brokerId, id)).length, 1);

  // Refusals read like restore_from's; unknown instances are 404.
  const malformed = await api(env.client, 'POST', `/broker/v1/instances/${id}/restore`, { backup: 7 });
  t.is(malformed.status, 400);
  const foreign = await api(env.client, 'POST', `/broker/v1/instances/${id}/restore`, { backup: 'latest', instance: 'no-such-instance' });
  t.is(foreign.status, 400);
  t.regex(foreign.body.description, /does not name a backup this instance can start from/);
  t.is((await api(env.client, 'POST', '/broker/v1/instances/nobody/restore', { backup: 'latest' })).status, 404);
});

test.serial('failed in-place restores (a damaged object, another offering’s dump) leave the instance with its data; an export imported restores', async (t) => {
  const id = uniqueId('bad');
  t.is((await provisioned(env.client, id)).body.state, 'succeeded');
  const uri = await bind(env.client, id);
  await query(uri, "CREATE TABLE orders AS SELECT g AS id, 'kept-' || g AS item FROM generate_series(1, 300) g");
  const backup = await backUp(env.client, id);

  // Export, then import the very dump: a new backup of origin "import".
  const download = await fetch(`${env.client.url}/broker/v1/instances/${id}/backups/${backup.id}/download`, { headers: { Authorization: env.client.basic } });
  const dump = Buffer.from(await download.arrayBuffer());
  const imported = await fetch(`${env.client.url}/broker/v1/instances/${id}/backups/import`, {
    method: 'POST',
    headers: { Authorization: env.client.basic, 'Content-Type': 'application/octet-stream' },
    body: dump,
  });
  t.is(imported.status, 201);
  const importedBody = (await imported.json()) as Record<string, any>;
  t.like(importedBody, { state: 'succeeded', dump_size: dump.length });
  t.true(importedBody.size > 0);

  // A damaged object: the restore fails and says so; the data stays.
  await query(uri, "UPDATE orders SET item = 'changed' WHERE id = 1");
  const file = path.join(dir, id, `${backup.id}.osb-backup`);
  const bytes = readFileSync(file);
  bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
  writeFileSync(file, bytes);
  const damaged = await (await restoreInPlace(env.client, id, { backup: backup.id })).done();
  t.is(damaged.body.state, 'failed');
  t.regex(damaged.body.description, /^Restore failed: backup \S+ of instance \S+ cannot be read: the backup is damaged or was tampered with/);
  t.regex(damaged.body.description, /The instance runs on its data from before the restore\.$/);
  t.deepEqual(await query(uri, "SELECT count(*)::int AS n, count(*) FILTER (WHERE item = 'changed')::int AS changed FROM orders"), [{ n: 300, changed: 1 }]);

  // The object gone from the store (a folder unmounted, a bucket emptied): the same, with the store's word for it.
  rmSync(file);
  const missing = await (await restoreInPlace(env.client, id, { backup: backup.id })).done();
  t.is(missing.body.state, 'failed');
  t.regex(missing.body.description, /^Restore failed: backup \S+ of instance \S+ cannot be read: backup \S+ does not exist in /);
  t.regex(missing.body.description, /The instance runs on its data from before the restore\.$/);

  // Another offering's dump, imported: accepted as bytes, refused by the restore script; the data stays.
  const mariadb = Buffer.from('-- MariaDB dump 10.19  Distrib 11.4.2-MariaDB\nCREATE TABLE `orders` (`id` int);\nINSERT INTO `orders` VALUES (1);\n');
  const foreign = await fetch(`${env.client.url}/broker/v1/instances/${id}/backups/import`, {
    method: 'POST',
    headers: { Authorization: env.client.basic, 'Content-Type': 'application/octet-stream' },
    body: mariadb,
  });
  t.is(foreign.status, 201);
  const foreignId = ((await foreign.json()) as Record<string, any>).id;
  const refused = await (await restoreInPlace(env.client, id, { backup: foreignId })).done();
  t.is(refused.body.state, 'failed');
  t.regex(
    refused.body.description,
    /^Restore failed: the postgresql restore script refused backup \S+ of instance \S+: restore script failed: .*pg_dump custom-format/,
  );
  t.deepEqual(await query(uri, "SELECT count(*)::int AS n, count(*) FILTER (WHERE item = 'changed')::int AS changed FROM orders"), [{ n: 300, changed: 1 }]);
  t.is((await instanceVolumes(env.config.brokerId, id)).length, 1, 'the fresh volumes of the failed restores are gone');

  // The listing shows where each backup came from.
  const listed = await api(env.client, 'GET', `/broker/v1/instances/${id}/backups`);
  t.deepEqual(
    listed.body.backups.map((listedBackup: any) => listedBackup.origin),
    ['import', 'import', 'manual'],
  );

  // The imported export restores: the row changed since goes back.
  const restored = await (await restoreInPlace(env.client, id, { backup: importedBody.id })).done();
  t.is(restored.body.state, 'succeeded', restored.body.description);
  t.deepEqual(await contents(uri), [{ n: 300, first: 'kept-1' }]);
  t.deepEqual(await query(uri, "SELECT count(*)::int AS n FROM orders WHERE item = 'changed'"), [{ n: 0 }]);

  // An empty upload is refused.
  const empty = await fetch(`${env.client.url}/broker/v1/instances/${id}/backups/import`, {
    method: 'POST',
    headers: { Authorization: env.client.basic, 'Content-Type': 'application/octet-stream' },
    body: Buffer.alloc(0),
  });
  t.is(empty.status, 400);
});

test.serial('a backup restored by a broker with another encryption key fails clearly, and the new instance leaves nothing behind', async (t) => {
  const id = uniqueId('key');
  t.is((await provisioned(env.client, id)).body.state, 'succeeded');
  await query(await bind(env.client, id), 'CREATE TABLE orders (id int, item text)');
  const backup = await backUp(env.client, id);

  // A second broker (its own key and Redis) that knows the backup's record and reads the same store.
  const other = await startTestBroker(45, {
    backup: { store: { kind: 'local', dir }, retention },
    portRange: { first: 45500, last: 45549 },
  } as Partial<Config>);
  cleanups.push(() => other.stop());
  const source = new Redis(env.redisUrl);
  const target = new Redis(other.redisUrl);
  try {
    const record = await source.get(`osb:${env.config.brokerId}:backup:${id}:${backup.id}`);
    await target.set(`osb:${other.config.brokerId}:backup:${id}:${backup.id}`, record!);
    await target.zadd(`osb:${other.config.brokerId}:backups:${id}`, Date.now(), backup.id);
  } finally {
    source.disconnect();
    target.disconnect();
  }
  const failed = await provisioned(other.client, uniqueId('dst'), { parameters: { restore_from: { instance: id, backup: backup.id } } });
  t.is(failed.body.state, 'failed');
  t.regex(
    failed.body.description,
    /^Provisioning failed: backup \S+ of instance \S+ cannot be read: the backup was sealed with another encryption key \(key id [0-9a-f]+; this broker's BROKER_ENCRYPTION_KEY has key id [0-9a-f]+\)$/,
  );
  t.deepEqual(await brokerObjects(other.config.brokerId), { containers: [], volumes: [] });
  t.deepEqual(await redisKeys(other.redisUrl, `osb:${other.config.brokerId}:port:*`), []);
});

test.serial('a broker killed in the middle of an in-place restore: the next one leaves the instance working, never empty', async (t) => {
  const redis = await startTestRedis();
  cleanups.push(() => redis.stop());
  const brokerId = `k${randomBytes(4).toString('hex')}`;
  cleanups.push(() => removeEverything(brokerId));
  const state = tempStateDir();
  cleanups.push(() => state.remove());
  const brokerEnv = {
    PORT: String(await freePort()),
    BROKER_PASSWORD: 'restore-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    REDIS_URL: redis.url,
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: '45550-45599',
    BROKER_STATE_DIR: state.dir,
    BROKER_LEASE_SECONDS: '3',
    BROKER_SWEEP_SECONDS: '1',
    LOG_LEVEL: 'info',
  };
  const first = await spawnBroker(brokerEnv);
  const id = uniqueId('kill');
  t.is((await provisioned(first.client, id)).body.state, 'succeeded');
  const uri = await bind(first.client, id);
  await query(uri, "CREATE TABLE orders AS SELECT g AS id, 'old-' || g AS item, repeat('x', 200) AS pad FROM generate_series(1, 50000) g");
  const backup = await backUp(first.client, id);
  t.is(backup.state, 'succeeded', backup.description);
  await query(uri, "TRUNCATE orders; INSERT INTO orders VALUES (1, 'new-1', '')");

  const { operation } = await restoreInPlace(first.client, id, { backup: backup.id });
  // Killed once the switch has begun: the container is being replaced or the backup loaded.
  await waitUntil(
    'the restore to work on the fresh volume',
    async () => /fresh volume|Starting|Setting up|Checking/.test((await storedRecord(redis.url, brokerId, 'operation', operation))?.description ?? ''),
    60_000,
    5,
  );
  t.is((await first.kill('SIGKILL')).signal, 'SIGKILL');
  t.is((await storedRecord(redis.url, brokerId, 'operation', operation))?.state, 'in progress');

  const second = await spawnBroker(brokerEnv);
  await second.waitForLog((record) => record.msg === 'continuing an operation nobody holds' && record.operation === operation, 30_000);
  const done = await second.client.waitForInstance(id, operation, 180_000);
  t.true(['succeeded', 'failed'].includes(done.body.state), JSON.stringify(done.body));
  t.log(`the resumed restore ended ${done.body.state}: ${done.body.description}`);
  if (done.body.state === 'failed') t.regex(done.body.description, /the broker process running it stopped before it was done.*runs on its data from before/);
  // Old data or restored data, never none: the binding from before reads one of the two.
  const rows = await contents(uri);
  t.true(
    sameRows(rows, [{ n: 1, first: 'new-1' }]) || sameRows(rows, [{ n: 50000, first: 'old-1' }]),
    `the instance holds the data from before or the restored data: ${JSON.stringify(rows)}`,
  );
  t.is((await instanceVolumes(brokerId, id)).length, 1);
  // It is usable: a new binding works, and another restore succeeds.
  t.is((await query(await bind(second.client, id), 'SELECT 1 AS one'))[0].one, 1);
  const again = await (await restoreInPlace(second.client, id, { backup: backup.id })).done();
  t.is(again.body.state, 'succeeded', again.body.description);
  t.deepEqual(await contents(uri), [{ n: 50000, first: 'old-1' }]);

  // A process that died right after recording the new volume, as the store would hold it: the next one only removes
  // the volume from before and ends the restore succeeded.
  const previous = `osb-${brokerId}-${id}-data-before`;
  await engine.ensureVolume(previous, { [LABEL.broker]: brokerId, [LABEL.role]: 'instance', [LABEL.instance]: id });
  const record = (await storedRecord(redis.url, brokerId, 'instance', id))!;
  const crashed = `crashed${randomBytes(4).toString('hex')}`;
  const raw = new Redis(redis.url);
  try {
    await raw.set(
      `osb:${brokerId}:operation:${crashed}`,
      JSON.stringify({
        id: crashed,
        type: 'restore',
        instanceId: id,
        state: 'in progress',
        description: 'Checking that the restored instance accepts a login.',
        createdAt: new Date().toISOString(),
        restore: { source: { instanceId: id, backupId: backup.id }, previousVolume: previous, freshVolume: record.volumeName, swapping: true },
      }),
    );
    await raw.sadd(`osb:${brokerId}:operations:active`, crashed);
    await raw.set(`osb:${brokerId}:instance:${id}`, JSON.stringify({ ...record, lastOperationId: crashed }));
  } finally {
    raw.disconnect();
  }
  const tidied = await second.client.waitForInstance(id, crashed, 60_000);
  t.deepEqual(tidied.body, { state: 'succeeded', description: `Restored backup ${backup.id} of instance ${id}; the instance runs on it.` });
  t.false(await engine.volumeExists(previous));
  t.deepEqual(await contents(uri), [{ n: 50000, first: 'old-1' }]);
  await second.kill('SIGTERM');
});

function sameRows(actual: unknown, expected: unknown): boolean {
  return JSON.stringify(actual) === JSON.stringify(expected);
}
