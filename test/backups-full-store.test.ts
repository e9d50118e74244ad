// A full backup store: the broker's local store on a 2 MiB tmpfs, a PostgreSQL whose dump is several MiB of
// incompressible bytes. The backup must end failed with a description that says the store is full, leave no
// partial file behind (and the space free again), and a backup that fits must succeed afterwards. Mounting needs
// root (CAP_SYS_ADMIN); where the mount is refused the test is skipped and says why. Port block 44, upper half
// (backups-s3.test.ts has the lower one).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Config } from '../src/config.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';

const BLOCK = 41000 + 44 * 100;
const mountPoint = mkdtempSync(path.join(tmpdir(), 'osb-backups-full-'));

/** Mounts the small tmpfs; the reason it could not, otherwise. */
function mountSmallStore(): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=700', 'tmpfs', mountPoint], { stdio: 'pipe' });
    return undefined;
  } catch (error) {
    rmSync(mountPoint, { recursive: true, force: true });
    return ((error as { stderr?: Buffer }).stderr?.toString() || (error as Error).message).trim();
  }
}
const refused = mountSmallStore();

let env: TestBroker | undefined;
test.after.always(async () => {
  await env?.stop();
  if (refused) return;
  execFileSync('umount', [mountPoint]);
  rmSync(mountPoint, { recursive: true, force: true });
});

/** Every file in the store, hidden ones (a put's temporary file) included. */
const filesIn = (dir: string) =>
  readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => !entry.isDirectory())
    .map((entry) => path.join(entry.parentPath, entry.name));

async function backUp(broker: TestBroker, id: string): Promise<any> {
  const started = await broker.client.request('POST', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  if (started.status !== 202) throw new Error(`backup: ${started.status} ${JSON.stringify(started.body)}`);
  return waitUntil(
    `backup ${started.body.id} to end`,
    async () => {
      const listed = await broker.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
      const backup = listed.body.backups.find((candidate: { id: string }) => candidate.id === started.body.id);
      return backup?.state !== 'in progress' ? backup : undefined;
    },
    120_000,
    200,
  );
}

// Skipped only on a developer's machine that refuses the mount; in CI a refused mount fails the test.
(refused && !process.env.CI ? test.skip : test)(
  `a full local store: the backup fails saying so and leaves no partial file${refused ? ` (mount -t tmpfs refused: ${refused})` : ''}`,
  async (t) => {
    if (refused) return t.fail(`the small store could not be mounted: ${refused}`);
    const store = path.join(mountPoint, 'backups');
    env = await startTestBroker(44, {
      backup: { store: { kind: 'local', dir: store }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 } },
      portRange: { first: BLOCK + 50, last: BLOCK + 99 },
    } as Partial<Config>);
    const broker = env;
    const id = uniqueId('full');
    const accepted = await broker.client.provision(id, provisionBody(PG.service, PG.small));
    t.is((await broker.client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
    const bound = await broker.client.bind(id, uniqueId('b'), { service_id: PG.service, plan_id: PG.small });
    const client = new pg.Client({ connectionString: bound.body.credentials.uri, connectionTimeoutMillis: 5000 });
    await client.connect();
    try {
      // About 5 MiB of random bytes: neither pg_dump nor gzip can make them fit into 2 MiB.
      await client.query(
        "CREATE TABLE noise AS SELECT g AS id, decode(md5(random()::text) || md5(random()::text), 'hex') AS bytes FROM generate_series(1, 160000) g",
      );

      const failed = await backUp(broker, id);
      t.is(failed.state, 'failed');
      t.regex(failed.description, /^Backup failed: writing backup \S+ in local folder \S+ failed: ENOSPC: no space left on device/);
      t.log(failed.description);
      t.deepEqual(filesIn(store), [], 'no partial object is left');
      const { bavail, blocks } = statfsSync(mountPoint);
      t.true(bavail >= blocks - 8, `the space is free again (${bavail} of ${blocks} blocks)`);

      // Once the dump fits, the same store takes it.
      await client.query('DROP TABLE noise');
      const fits = await backUp(broker, id);
      t.is(fits.state, 'succeeded', fits.description);
      t.deepEqual(
        filesIn(store).map((file) => path.relative(store, file)),
        [path.join(id, `${fits.id}.osb-backup`)],
      );
    } finally {
      await client.end();
    }
  },
);
