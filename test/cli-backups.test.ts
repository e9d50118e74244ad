// The osb-docker backup commands against a real broker and PostgreSQL (small plan): backup, backups, export to a
// file and to stdout, import into a second instance, create --from-backup, clone, and restore in place.
import test from 'ava';
import { spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { PACKAGE_ROOT, type Config } from '../src/config.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';

const CLI = path.join(PACKAGE_ROOT, 'dist/src/cli/osb-docker.js');

let env: TestBroker;
let dir: string;

test.before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'osb-cli-backups-'));
  env = await startTestBroker(47, {
    backup: { store: { kind: 'local', dir: path.join(dir, 'store') }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 } },
  } as Partial<Config>);
});
test.after.always(async () => {
  await env?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the CLI as a user would, in the test's folder; stdin is a file when given. */
function cli(args: string[], stdinFile?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: dir,
      env: {
        ...Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('OSB_BROKER_'))),
        OSB_BROKER_URL: env.broker.url,
        OSB_BROKER_USERNAME: env.config.username,
        OSB_BROKER_PASSWORD: env.config.password,
      },
      stdio: [stdinFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    if (stdinFile) createReadStream(stdinFile).pipe(child.stdin!);
    const stdout: Buffer[] = [];
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr!.on('data', (chunk) => {
      stderr += chunk;
    });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout: Buffer.concat(stdout), stderr }));
  });
}

const show = (result: Run) => `exit ${result.code}\nstdout: ${result.stdout.toString().slice(0, 2000)}\nstderr: ${result.stderr}`;

async function instanceId(name: string): Promise<string> {
  const listed = (await env.client.request('GET', '/broker/v1/instances')).body.instances as Array<{ id: string; name?: string }>;
  const found = listed.find((instance) => instance.name === name);
  if (!found) throw new Error(`no instance ${name}`);
  return found.id;
}

/** Runs SQL through a new binding of the named instance, with the real PostgreSQL client. */
async function sql(name: string, text: string): Promise<Array<Record<string, unknown>>> {
  const id = await instanceId(name);
  const bound = await env.client.bind(id, uniqueId('b'), { service_id: PG.service, plan_id: PG.small });
  const client = new pg.Client({ connectionString: bound.body.credentials.uri });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

const count = async (name: string) => (await sql(name, 'SELECT count(*)::int AS n FROM orders'))[0]!.n;

test.serial('backup, backups, export, import, create --from-backup, clone and restore in place, through osb-docker', async (t) => {
  const created = await cli(['create', 'postgresql', 'small', 'shop', '-c', '{"backup_schedule": "0 3 1 1 *"}']);
  t.is(created.code, 0, show(created));
  await sql('shop', "CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders SELECT g, 'item-' || g FROM generate_series(1, 500) g");

  // backup: started, followed to its end, id, size and duration printed.
  const backedUp = await cli(['backup', 'shop']);
  t.is(backedUp.code, 0, show(backedUp));
  const id = /^Backed up shop: backup (\S+), [\d.]+ (?:B|kB|MB) \(dump [\d.]+ (?:B|kB|MB)\), in [\d.]+ s\.\n$/.exec(backedUp.stdout.toString())?.[1];
  t.truthy(id, show(backedUp));
  t.regex(backedUp.stderr, new RegExp(`^Backing shop up \\(backup ${id}\\)…\\n`));

  // backups: the table lists it as succeeded, made on demand; the schedule line follows.
  const listed = await cli(['backups', 'shop']);
  t.is(listed.code, 0, show(listed));
  const lines = listed.stdout.toString().trim().split('\n');
  t.deepEqual(lines[0]!.split(/\s{2,}/), ['ID', 'STATE', 'ORIGIN', 'CREATED', 'SIZE', 'DESCRIPTION']);
  const row = lines[1]!.split(/\s{2,}/);
  t.is(row[0], id);
  t.is(row[1], 'succeeded');
  t.is(row[2], 'manual');
  t.regex(row[3]!, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
  const json = JSON.parse((await cli(['backups', 'shop', '--json'])).stdout.toString());
  t.is(json.backups[0].id, id);
  t.regex(
    lines.at(-1)!,
    /^Schedule: 0 3 1 1 \* \(this instance's\); next run \d{4}-01-01 03:00:00 UTC; last success \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/,
    'the schedule line follows the table',
  );

  // export to a file: the plain pg_dump custom format, the size the broker recorded, progress on stderr.
  const exported = await cli(['export', 'shop']);
  t.is(exported.code, 0, show(exported));
  const file = path.join(dir, `shop-${id}.dump`);
  t.is(exported.stdout.toString(), `shop-${id}.dump\n`);
  const dump = readFileSync(file);
  t.is(dump.subarray(0, 5).toString(), 'PGDMP');
  t.is(dump.length, json.backups[0].dump_size);
  t.regex(exported.stderr, /Exported backup \S+ of shop: [\d.]+ (?:kB|MB) in [\d.]+ s \(([\d.]+ MB\/s|instantly)\)\.\n$/);
  t.deepEqual(
    readdirSync(dir).filter((name) => name.endsWith('.partial')),
    [],
    'no partial file left',
  );
  // An existing file is not overwritten; to stdout, the same bytes and not a word on stderr.
  const again = await cli(['export', 'shop', `shop-${id}.dump`]);
  t.is(again.code, 1);
  t.is(again.stderr, `osb-docker: shop-${id}.dump already exists; remove it or name another file\n`);
  const piped = await cli(['export', 'shop', '-', '--backup', id!]);
  t.is(piped.code, 0, piped.stderr);
  t.true(piped.stdout.equals(dump), 'stdout is the dump');
  t.is(piped.stderr, '');
  const unknown = await cli(['export', 'shop', '--backup', 'nope']);
  t.is(unknown.code, 1);
  t.is(unknown.stderr, `osb-docker: shop has no backup "nope"; backups: ${id}\n`);

  // create --from-backup: a new instance that starts with the data.
  const copy = await cli(['create', 'postgresql', 'small', 'shop-copy', '--from-backup', `shop:${id}`]);
  t.is(copy.code, 0, show(copy));
  t.is(await count('shop-copy'), 500);

  // import: the exported file into that second instance, after its table is gone; read as a stream from stdin too.
  await sql('shop-copy', 'DROP TABLE orders');
  const imported = await cli(['import', 'shop-copy', file]);
  t.is(imported.code, 0, show(imported));
  t.regex(imported.stderr, /Uploaded [\d.]+ (?:kB|MB) in [\d.]+ s \(([\d.]+ MB\/s|instantly)\): backup (\S+) of shop-copy/);
  t.regex(imported.stdout.toString(), /^Restored shop-copy from backup \S+ in [\d.]+ s\.\n$/);
  t.is(await count('shop-copy'), 500);
  const importedList = JSON.parse((await cli(['backups', 'shop-copy', '--json'])).stdout.toString());
  t.is(importedList.backups[0].origin, 'import');
  await sql('shop-copy', 'DELETE FROM orders WHERE id > 100');
  const fromStdin = await cli(['import', 'shop-copy'], file);
  t.is(fromStdin.code, 0, show(fromStdin));
  t.is(await count('shop-copy'), 500);
  // Not a dump: refused by the restore script, the instance as it was.
  const junk = path.join(dir, 'junk.dump');
  writeFileSync(junk, 'this is not a dump\n'.repeat(100));
  const refused = await cli(['import', 'shop-copy', junk]);
  t.is(refused.code, 1, show(refused));
  t.regex(refused.stderr, /osb-docker: (restoring shop-copy from backup \S+ failed|the broker refused)/);
  t.is(await count('shop-copy'), 500);
  t.is((await cli(['delete', 'shop-copy'])).code, 0);

  // restore in place: rows written after the backup are gone again.
  await sql('shop', "INSERT INTO orders SELECT g, 'late-' || g FROM generate_series(501, 600) g");
  t.is(await count('shop'), 600);
  const restored = await cli(['restore', 'shop']);
  t.is(restored.code, 0, show(restored));
  t.regex(restored.stdout.toString(), new RegExp(`^Restored shop from backup ${id} in [\\d.]+ s\\.\\n$`));
  t.is(await count('shop'), 500);

  // clone: same offering and plan, from a fresh backup of the live instance.
  await sql('shop', "INSERT INTO orders VALUES (9999, 'after-restore')");
  const cloned = await cli(['clone', 'shop', 'shop-clone']);
  t.is(cloned.code, 0, show(cloned));
  t.regex(cloned.stdout.toString(), /^Created shop-clone: postgresql small \(instance [0-9a-f-]{36}\)\./);
  t.deepEqual(await sql('shop-clone', 'SELECT item FROM orders WHERE id = 9999'), [{ item: 'after-restore' }]);
  t.is(await count('shop-clone'), 501);
  t.true(existsSync(file));
});

test.serial('wrong names and backups: the messages say what there is', async (t) => {
  // An offering without backups: backup and import are refused with the catalog's reason, the upload not sent on.
  t.is((await cli(['create', 'memcached', 'small', 'sessions'])).code, 0);
  const noBackup = await cli(['backup', 'sessions']);
  t.is(noBackup.code, 1);
  t.regex(noBackup.stderr, /^osb-docker: the broker refused to back sessions up: memcached instances have no backups: .*cache.* \(BackupsUnsupported\)\n$/);
  const big = path.join(dir, 'big.dump');
  writeFileSync(big, Buffer.alloc(32 * 1024 * 1024, 1));
  const noImport = await cli(['import', 'sessions', big]);
  t.is(noImport.code, 1, show(noImport));
  t.regex(noImport.stderr, /osb-docker: the broker refused the import into sessions: memcached instances have no backups/);

  const nobody = await cli(['backups', 'nobody']);
  t.is(nobody.code, 1);
  t.regex(nobody.stderr, /^osb-docker: no service instance named "nobody"; instances: /);
  const typo = await cli(['bakups', 'shop']);
  t.is(typo.code, 2);
  t.regex(typo.stderr, /^osb-docker: unknown command "bakups" \(did you mean "backups"\?\)/);
  const fromNothing = await cli(['create', 'postgresql', 'small', 'x', '--from-backup', 'shop:']);
  t.is(fromNothing.code, 2);
  t.regex(fromNothing.stderr, /a backup id belongs after the colon/);
});
