// Backups through the broker: the backup API, restore_from at provision, refusals and a damaged object, against the
// real engine with the real PostgreSQL client, and the local backup store in a folder of the test's own.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Config } from '../src/config.js';
import { brokerObjects, PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';

const MEMCACHED = { service: '0c4a4b5e-6f4e-4f0a-9a2b-6d9c4f8e2a11', small: '' };
let env: TestBroker;
let dir: string;

test.before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'osb-backups-'));
  env = await startTestBroker(39, {
    backup: { store: { kind: 'local', dir }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 } },
  } as Partial<Config>);
});
test.after.always(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function provision(id: string, extra: Record<string, unknown> = {}, space = 'space-1') {
  const accepted = await env.client.provision(id, { ...provisionBody(PG.service, PG.small, extra), space_guid: space });
  return accepted;
}

async function ready(id: string, extra: Record<string, unknown> = {}) {
  const accepted = await provision(id, extra);
  if (accepted.status !== 202) throw new Error(`provision: ${accepted.status} ${JSON.stringify(accepted.body)}`);
  return env.client.waitForInstance(id, accepted.body.operation);
}

async function bindAndQuery(id: string, sql: string, values: unknown[] = []) {
  const bound = await env.client.bind(id, uniqueId('b'), { service_id: PG.service, plan_id: PG.small });
  const client = new pg.Client({ connectionString: bound.body.credentials.uri });
  await client.connect();
  try {
    return (await client.query(sql, values)).rows;
  } finally {
    await client.end();
  }
}

async function backUp(id: string) {
  const started = await env.client.request('POST', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  if (started.status !== 202) throw new Error(`backup: ${started.status} ${JSON.stringify(started.body)}`);
  return waitUntil(
    `backup ${started.body.id} to end`,
    async () => {
      const listed = await env.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
      const backup = listed.body.backups.find((candidate: any) => candidate.id === started.body.id);
      return backup?.state !== 'in progress' ? backup : undefined;
    },
    120_000,
    200,
  );
}

test.serial('back up, deprovision, provision a new instance with restore_from: the data is back; other spaces are refused alike', async (t) => {
  const source = uniqueId('src');
  t.is((await ready(source)).body.state, 'succeeded');
  await bindAndQuery(source, 'CREATE TABLE orders (id int, item text)');
  await bindAndQuery(source, "INSERT INTO orders SELECT g, 'secret-item-' || g FROM generate_series(1, 2000) g");

  const backup = await backUp(source);
  t.is(backup.state, 'succeeded', backup.description);
  t.true(backup.size > 0 && backup.dump_size > 0);
  t.regex(backup.sha256, /^[0-9a-f]{64}$/);
  t.is(backup.maintenance_version, '15.0.2');

  // The stored object is sealed: no plain text of the data in it.
  const files = readdirSync(path.join(dir, source));
  t.is(files.length, 1);
  const stored = readFileSync(path.join(dir, source, files[0]!));
  t.false(stored.includes('secret-item-'), 'the object does not hold the data in plain text');
  t.is(stored.length, backup.size);

  // Export: the dump itself, decrypted (PostgreSQL's custom format starts with PGDMP).
  const download = await fetch(`${env.client.url}/broker/v1/instances/${source}/backups/${backup.id}/download`, {
    headers: { Authorization: env.client.basic },
  });
  t.is(download.status, 200);
  const dump = Buffer.from(await download.arrayBuffer());
  t.is(dump.subarray(0, 5).toString(), 'PGDMP');
  t.is(dump.length, backup.dump_size);

  const deleted = await env.client.deprovision(source, PG.service, PG.small);
  t.is((await env.client.waitForInstance(source, deleted.body.operation)).body.state, 'succeeded');

  // Backups outlive their instance; a new one starts from it.
  const restored = uniqueId('dst');
  const done = await ready(restored, { parameters: { restore_from: { instance: source, backup: backup.id } } });
  t.is(done.body.state, 'succeeded', done.body.description);
  const rows = await bindAndQuery(restored, 'SELECT count(*)::int AS n, max(item) AS last FROM orders');
  t.deepEqual(rows, [{ n: 2000, last: 'secret-item-999' }]);

  // "latest" works too; another space, or an instance that never existed, get the very same refusal.
  const otherSpace = await provision(uniqueId('x'), { parameters: { restore_from: { instance: source, backup: 'latest' } } }, 'space-2');
  const nowhere = await provision(uniqueId('x'), { parameters: { restore_from: { instance: 'no-such-instance', backup: 'latest' } } });
  t.is(otherSpace.status, 400);
  t.deepEqual(otherSpace.body, nowhere.body, 'the refusal does not tell whether the other instance exists');
  const malformed = await provision(uniqueId('x'), { parameters: { restore_from: 'yesterday' } });
  t.is(malformed.status, 400);
  t.regex(malformed.body.description, /restore_from must be/);

  // A damaged object fails the provision with a clear reason, and removes what the provision made.
  const second = await backUp(restored);
  const file = path.join(dir, restored, `${second.id}.osb-backup`);
  const bytes = readFileSync(file);
  bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
  writeFileSync(file, bytes);
  const broken = uniqueId('brk');
  const failed = await ready(broken, { parameters: { restore_from: { instance: restored, backup: second.id } } });
  t.is(failed.body.state, 'failed');
  t.regex(failed.body.description, /^Provisioning failed: .*(damaged|corrupt|authentic|modified)/i);
  t.is((await env.client.request('GET', `/v2/service_instances/${broken}`)).status, 404);

  // DELETE removes record and object.
  const removed = await env.client.request('DELETE', `/broker/v1/instances/${restored}/backups/${second.id}`, undefined, { version: null });
  t.is(removed.status, 200);
  t.throws(() => statSync(file));
  const after = await env.client.request('GET', `/broker/v1/instances/${restored}/backups`, undefined, { version: null });
  t.deepEqual(after.body.backups, []);
});

test.serial('an offering without backups says so', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  const memcached = catalog.body.services.find((service: any) => service.name === 'memcached');
  MEMCACHED.service = memcached.id;
  MEMCACHED.small = memcached.plans[0].id;
  const id = uniqueId('mc');
  const accepted = await env.client.provision(id, provisionBody(MEMCACHED.service, MEMCACHED.small));
  t.is((await env.client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const refused = await env.client.request('POST', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  t.is(refused.status, 422);
  t.is(refused.body.error, 'BackupsUnsupported');
  t.regex(refused.body.description, /memcached instances have no backups/);
  const unknown = await env.client.request('GET', '/broker/v1/instances/nobody/backups', undefined, { version: null });
  t.is(unknown.status, 404);
});

test.serial('a container from before the backup script existed: the backup fails saying which upgrade brings it', async (t) => {
  const id = uniqueId('old');
  t.is((await ready(id)).body.state, 'succeeded');
  // What an instance made on an image of an earlier maintenance version looks like: no /osb/backup inside.
  const container = (await brokerObjects(env.config.brokerId)).containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;
  execFileSync('docker', ['exec', '-u', '0', container.name, 'rm', '/osb/backup']);
  const backup = await backUp(id);
  t.is(backup.state, 'failed');
  t.regex(
    backup.description,
    /the instance's container has no backup script: it runs maintenance version 15\.0\.2; its container was made from an earlier build/,
  );
});
