// Backups through the broker into S3-compatible storage. The S3 API server is s3rver on loopback: a stand-in for S3
// (MinIO, AWS, ...) that only tests use, keeping its bucket in a folder of the test's own. The broker gets the store
// from the documented BROKER_BACKUP_S3_* settings, path style. A PostgreSQL with recognisable rows is backed up, the
// object in the bucket is sealed (neither the rows nor the dump in plain text), and restore_from brings the rows
// into a new instance. With s3rver stopped, a backup ends failed with a clear description (it does not hang), a
// restore_from of that backup is refused and a restore_from of an earlier one fails the provision cleanly; once
// s3rver is back, a backup succeeds again. Port block 44, lower half (backups-full-store.test.ts has the upper one).
import test from 'ava';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import S3rver from 's3rver';
import { loadBackupConfig } from '../src/backups/index.js';
import type { Config } from '../src/config.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';

// The AWS SDK warns once per process that its releases from 2027 on want Node 22; not news for these tests.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const BUCKET = 'osb-broker-backups';
const PREFIX = 'replica-set-a/';
const ROW = 'recognisable-row-';
const BLOCK = 41000 + 44 * 100;

let env: TestBroker;
let s3Dir: string;
let s3: S3rver | undefined;
let s3Port = 0;

/** Starts s3rver on its port (any free one the first time) over the same folder, so a restart finds the bucket again. */
async function startS3(): Promise<void> {
  s3 = new S3rver({ address: '127.0.0.1', port: s3Port, directory: s3Dir, silent: true, configureBuckets: [{ name: BUCKET, configs: [] }] });
  s3Port = (await s3.run()).port;
}

async function stopS3(): Promise<void> {
  await s3?.close();
  s3 = undefined;
}

test.before(async () => {
  s3Dir = mkdtempSync(path.join(tmpdir(), 'osb-backups-s3-'));
  await startS3();
  const backup = loadBackupConfig({
    BROKER_BACKUP_STORE: 's3',
    BROKER_BACKUP_S3_BUCKET: BUCKET,
    BROKER_BACKUP_S3_PREFIX: PREFIX,
    BROKER_BACKUP_S3_ENDPOINT: `http://127.0.0.1:${s3Port}`,
    BROKER_BACKUP_S3_FORCE_PATH_STYLE: 'true',
    // The one access key s3rver knows (it does not verify signatures).
    BROKER_BACKUP_S3_ACCESS_KEY_ID: 'S3RVER',
    BROKER_BACKUP_S3_SECRET_ACCESS_KEY: 'S3RVER',
  });
  env = await startTestBroker(44, { backup, portRange: { first: BLOCK, last: BLOCK + 49 } } as Partial<Config>);
});
test.after.always(async () => {
  await env?.stop();
  await stopS3();
  if (s3Dir) rmSync(s3Dir, { recursive: true, force: true });
});

async function provision(id: string, parameters?: Record<string, unknown>) {
  const accepted = await env.client.provision(id, provisionBody(PG.service, PG.small, parameters ? { parameters } : {}));
  if (accepted.status !== 202) return accepted;
  return env.client.waitForInstance(id, accepted.body.operation);
}

async function query(id: string, sql: string): Promise<any[]> {
  const bound = await env.client.bind(id, uniqueId('b'), { service_id: PG.service, plan_id: PG.small });
  if (bound.status !== 201) throw new Error(`bind: ${bound.status} ${JSON.stringify(bound.body)}`);
  const client = new pg.Client({ connectionString: bound.body.credentials.uri, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

async function backUp(id: string): Promise<any> {
  const started = await env.client.request('POST', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  if (started.status !== 202) throw new Error(`backup: ${started.status} ${JSON.stringify(started.body)}`);
  return waitUntil(
    `backup ${started.body.id} to end`,
    async () => {
      const listed = await env.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
      const backup = listed.body.backups.find((candidate: { id: string }) => candidate.id === started.body.id);
      return backup?.state !== 'in progress' ? backup : undefined;
    },
    120_000,
    200,
  );
}

/** Every file s3rver keeps, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath, entry.name));
}

test.serial('S3: a backup goes to the bucket sealed, restore_from brings the rows back', async (t) => {
  const source = uniqueId('s3src');
  t.is((await provision(source)).body.state, 'succeeded');
  await query(source, `CREATE TABLE people (id int PRIMARY KEY, name text); INSERT INTO people SELECT g, '${ROW}' || g FROM generate_series(1, 3000) g`);

  const backup = await backUp(source);
  t.is(backup.state, 'succeeded', backup.description);
  t.is(backup.origin, 'manual');

  // The object is in the bucket, under the prefix, with the recorded size.
  const object = filesUnder(s3Dir).find((file) => file.includes(path.join(BUCKET, PREFIX, source, `${backup.id}.osb-backup`)) && !file.endsWith('.json'));
  t.truthy(object, filesUnder(s3Dir).join('\n'));
  const stored = readFileSync(object!);
  t.is(stored.length, backup.size);
  t.is(statSync(object!).size, backup.size);

  // Sealed: not the rows, and not the dump either (pg_dump -Fc compresses on its own, so compare with the dump itself).
  const download = await fetch(`${env.client.url}/broker/v1/instances/${source}/backups/${backup.id}/download`, {
    headers: { Authorization: env.client.basic },
  });
  t.is(download.status, 200);
  const dump = Buffer.from(await download.arrayBuffer());
  t.is(dump.subarray(0, 5).toString(), 'PGDMP');
  t.is(dump.length, backup.dump_size);
  for (const file of filesUnder(s3Dir)) {
    const bytes = readFileSync(file);
    t.false(bytes.includes(ROW), `${file} holds no row in plain text`);
    t.false(bytes.includes('PGDMP'), `${file} holds no plain dump`);
    for (let at = 0; at + 32 <= dump.length; at += Math.max(32, Math.floor(dump.length / 16))) {
      t.false(bytes.includes(dump.subarray(at, at + 32)), `${file} holds no piece of the dump (offset ${at})`);
    }
  }

  const restored = uniqueId('s3dst');
  const done = await provision(restored, { restore_from: { instance: source, backup: backup.id } });
  t.is(done.body.state, 'succeeded', done.body.description);
  t.deepEqual(await query(restored, `SELECT count(*)::int AS n, max(name) AS top FROM people WHERE name LIKE '${ROW}%'`), [{ n: 3000, top: `${ROW}999` }]);
});

test.serial('S3 down: the backup ends failed with a clear description, restoring is refused or fails cleanly; back up: backups succeed again', async (t) => {
  const source = uniqueId('s3down');
  t.is((await provision(source)).body.state, 'succeeded');
  await query(source, `CREATE TABLE people (id int, name text); INSERT INTO people VALUES (1, '${ROW}1')`);
  const before = await backUp(source);
  t.is(before.state, 'succeeded', before.description);

  await stopS3();
  try {
    const failed = await backUp(source);
    t.is(failed.state, 'failed');
    t.regex(failed.description, new RegExp(`^Backup failed: S3 endpoint http://127\\.0\\.0\\.1:${s3Port} did not answer`));
    t.false(failed.description.includes('S3RVER'), 'no credential in the description');
    t.is(failed.size, undefined);
    t.log(failed.description);

    // The failed backup is no source; the refusal is the one any unknown backup gets.
    const fromFailed = await env.client.provision(
      uniqueId('x'),
      provisionBody(PG.service, PG.small, { parameters: { restore_from: { instance: source, backup: failed.id } } }),
    );
    const fromNowhere = await env.client.provision(
      uniqueId('x'),
      provisionBody(PG.service, PG.small, { parameters: { restore_from: { instance: source, backup: 'no-such-backup' } } }),
    );
    t.is(fromFailed.status, 400);
    t.deepEqual(fromFailed.body, fromNowhere.body);

    // A succeeded backup cannot be read while the store is away: the provision fails, says why, and leaves nothing.
    const stranded = uniqueId('s3strand');
    const attempt = await provision(stranded, { restore_from: { instance: source, backup: before.id } });
    t.is(attempt.body.state, 'failed');
    t.regex(attempt.body.description, /^Provisioning failed: .*S3 endpoint http:\/\/127\.0\.0\.1:\d+ did not answer/);
    t.log(attempt.body.description);
    t.is((await env.client.request('GET', `/v2/service_instances/${stranded}`)).status, 404);
  } finally {
    await startS3();
  }

  const again = await backUp(source);
  t.is(again.state, 'succeeded', again.description);
  const listed = await env.client.request('GET', `/broker/v1/instances/${source}/backups`, undefined, { version: null });
  t.deepEqual(
    listed.body.backups.map((backup: { state: string }) => backup.state),
    ['succeeded', 'failed', 'succeeded'],
  );
});
