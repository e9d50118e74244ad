/**
 * Backup and restore throughput of a PostgreSQL database of BENCH_BACKUP_MB (default 512) through the broker, next
 * to `pg_dump -Fc | gzip > file` and `gunzip | pg_restore` run raw with `docker exec` in the same container, and the
 * broker's peak memory (RSS) meanwhile. The broker runs in this process with a local backup store in a temporary
 * folder; a dump of gigabytes must stream through it, so its RSS is sampled every 50 ms while it works.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { createLogger, logDestination } from '../src/log.js';
import { startBroker } from '../src/server.js';
import { PG, removeEverything, startTestRedis } from '../test/helpers/env.js';
import { OsbClient, provisionBody } from '../test/helpers/osb-client.js';
import { docker } from './raw.js';
import { table } from './stats.js';

const MB = 1024 * 1024;
const DATABASE = 'bench';
/** medium: 1 GiB memory and 1 CPU, room for a database of half a gigabyte and more. */
const PLAN = PG.medium;
/** Rows of ~200 bytes of random hex: half of it is entropy, so gzip has real work and gets about 2:1. */
const ROWS_PER_STATEMENT = 200_000;

export interface BackupSamples {
  databaseBytes: number;
  rows: number;
  loadMs: number;
  raw: { backupMs: number; backupBytes: number; restoreMs: number };
  broker: { backupMs: number; storedBytes: number; dumpBytes: number; restoreMs: number; plainProvisionMs: number };
  rss: { beforeMb: number; backupPeakMb: number; restorePeakMb: number; processPeakMb: number };
}

/** The highest RSS of this process while `work` runs, sampled every 50 ms. */
async function peakRss<T>(work: () => Promise<T>): Promise<{ value: T; peakMb: number }> {
  let peak = process.memoryUsage.rss();
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 50);
  try {
    const value = await work();
    return { value, peakMb: Math.max(peak, process.memoryUsage.rss()) / MB };
  } finally {
    clearInterval(timer);
  }
}

async function timed<T>(work: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await work();
  return { value, ms: performance.now() - started };
}

/** Runs the benchmark with a broker, Redis and instances of its own, and removes them all at the end. */
export async function benchBackup(targetMb: number, progress: (line: string) => void): Promise<BackupSamples> {
  const redis = await startTestRedis();
  const brokerId = `bench-bk-${randomBytes(4).toString('hex')}`;
  const storeDir = mkdtempSync(path.join(tmpdir(), 'osb-bench-backups-'));
  const password = randomBytes(16).toString('hex');
  // A port range of its own, above the test files' blocks (41000 + block * 100, blocks up to the high 40s).
  const config = loadConfig({ ...process.env, PORT: '0', REDIS_URL: redis.url, BROKER_ID: brokerId, BROKER_PORT_RANGE: '46500-46549', LOG_LEVEL: 'silent' });
  const log = createLogger('info', {}, logDestination('/dev/null'));
  try {
    const running = await startBroker(
      {
        ...config,
        password,
        encryptionKey: randomBytes(32),
        backup: { store: { kind: 'local', dir: storeDir }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 } },
      },
      log,
    );
    try {
      return await measure(new OsbClient(running.url, config.username, password), brokerId, targetMb, progress);
    } finally {
      await running.close();
    }
  } finally {
    await removeEverything(brokerId).catch((error: Error) => progress(`cleanup: ${error.message}`));
    await redis.stop().catch((error: Error) => progress(`cleanup: ${error.message}`));
    rmSync(storeDir, { recursive: true, force: true });
  }
}

async function provision(client: OsbClient, parameters: Record<string, unknown>): Promise<{ id: string; ms: number }> {
  const id = `bench-bk-${randomBytes(6).toString('hex')}`;
  const { ms } = await timed(async () => {
    const accepted = await client.provision(id, provisionBody(PG.service, PLAN, { parameters }));
    if (accepted.status !== 202) throw new Error(`provision answered ${accepted.status}: ${JSON.stringify(accepted.body)}`);
    const done = await client.untilFinished(() => client.lastOperation(id, accepted.body.operation), 3_600_000);
    if (done.body.state !== 'succeeded') throw new Error(`provision ended ${JSON.stringify(done.body)}`);
  });
  return { id, ms };
}

async function deprovision(client: OsbClient, id: string): Promise<void> {
  const deleting = await client.deprovision(id, PG.service, PLAN);
  if (deleting.status !== 202) throw new Error(`deprovision answered ${deleting.status}: ${JSON.stringify(deleting.body)}`);
  const done = await client.untilFinished(() => client.lastOperation(id, deleting.body.operation), 600_000);
  if (done.body.state !== 'succeeded') throw new Error(`deprovision ended ${JSON.stringify(done.body)}`);
}

async function measure(client: OsbClient, brokerId: string, targetMb: number, progress: (line: string) => void): Promise<BackupSamples> {
  progress('backup: provisioning a PostgreSQL (medium) ...');
  const source = await provision(client, { database: DATABASE });
  const container = `osb-${brokerId}-${source.id}`;
  const bound = await client.bind(source.id, `bench-b-${randomBytes(4).toString('hex')}`, { service_id: PG.service, plan_id: PLAN });
  if (bound.status !== 201) throw new Error(`bind answered ${bound.status}: ${JSON.stringify(bound.body)}`);
  const db = new pg.Client({ connectionString: bound.body.credentials.uri });
  await db.connect();
  let rows = 0;
  let databaseBytes = 0;
  const load = await timed(async () => {
    await db.query('CREATE TABLE bench_rows (id bigint, a text, b text)');
    for (;;) {
      databaseBytes = Number((await db.query('SELECT pg_database_size(current_database()) AS n')).rows[0].n);
      progress(`backup: loading data, ${(databaseBytes / MB).toFixed(0)} of ${targetMb} MB ...`);
      if (databaseBytes >= targetMb * MB) break;
      await db.query(
        `INSERT INTO bench_rows SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text),
           'order ' || g || ' ' || md5(random()::text) || md5(random()::text) || md5(random()::text)
         FROM generate_series($1::bigint, $2::bigint) g`,
        [rows + 1, rows + ROWS_PER_STATEMENT],
      );
      rows += ROWS_PER_STATEMENT;
    }
  });
  await db.end();

  // Raw: the same engine, the same container (same CPU and memory limits), no broker.
  const file = '/tmp/osb-bench-raw.dump.gz';
  progress('backup: raw pg_dump -Fc | gzip > file ...');
  const rawBackup = await timed(() =>
    docker(['exec', '-u', 'postgres', container, 'bash', '-c', `set -o pipefail; pg_dump -h /var/run/postgresql -Fc ${DATABASE} | gzip > ${file}`]),
  );
  const backupBytes = Number(await docker(['exec', container, 'stat', '-c', '%s', file]));
  progress('backup: raw gunzip | pg_restore into a new database ...');
  await docker(['exec', '-u', 'postgres', container, 'createdb', '-h', '/var/run/postgresql', 'bench_raw_restore']);
  const rawRestore = await timed(() =>
    docker([
      'exec',
      '-u',
      'postgres',
      container,
      'bash',
      '-c',
      `set -o pipefail; gunzip -c ${file} | pg_restore -h /var/run/postgresql --dbname=bench_raw_restore --no-owner --no-privileges --single-transaction --exit-on-error`,
    ]),
  );
  await docker(['exec', '-u', 'postgres', container, 'sh', '-c', `dropdb -h /var/run/postgresql bench_raw_restore && rm -f ${file}`]);

  // The broker: POST .../backups, the listing polled until the backup succeeded.
  const beforeMb = process.memoryUsage.rss() / MB;
  progress('backup: broker backup ...');
  const backup = await peakRss(() =>
    timed(async () => {
      const started = await client.request('POST', `/broker/v1/instances/${source.id}/backups`, undefined, { version: null });
      if (started.status !== 202) throw new Error(`backup answered ${started.status}: ${JSON.stringify(started.body)}`);
      for (;;) {
        await sleep(200);
        const listed = await client.request('GET', `/broker/v1/instances/${source.id}/backups`, undefined, { version: null });
        const record = listed.body.backups.find((candidate: { id: string }) => candidate.id === started.body.id);
        if (record?.state === 'succeeded') return record as { id: string; size: number; dump_size: number };
        if (record?.state !== 'in progress') throw new Error(`backup ended ${JSON.stringify(record)}`);
      }
    }),
  );

  // A plain provision of the same plan, warm, as the part of a restore that is not the restore.
  progress('backup: a plain provision, for reference ...');
  const plain = await provision(client, { database: DATABASE });
  await deprovision(client, plain.id);

  progress('backup: broker restore (provision with restore_from) ...');
  const restore = await peakRss(() => provision(client, { database: DATABASE, restore_from: { instance: source.id, backup: backup.value.value.id } }));
  const restored = await client.bind(restore.value.id, `bench-b-${randomBytes(4).toString('hex')}`, { service_id: PG.service, plan_id: PLAN });
  const check = new pg.Client({ connectionString: restored.body.credentials.uri });
  await check.connect();
  const count = Number((await check.query('SELECT count(*) AS n FROM bench_rows')).rows[0].n);
  await check.end();
  if (count !== rows) throw new Error(`the restored instance has ${count} rows, the source ${rows}`);

  return {
    databaseBytes,
    rows,
    loadMs: load.ms,
    raw: { backupMs: rawBackup.ms, backupBytes, restoreMs: rawRestore.ms },
    broker: {
      backupMs: backup.value.ms,
      storedBytes: backup.value.value.size,
      dumpBytes: backup.value.value.dump_size,
      restoreMs: restore.value.ms,
      plainProvisionMs: plain.ms,
    },
    rss: { beforeMb, backupPeakMb: backup.peakMb, restorePeakMb: restore.peakMb, processPeakMb: process.resourceUsage().maxRSS / 1024 },
  };
}

export function reportBackup(samples: BackupSamples | string, targetMb: number): void {
  console.log(`\nbackup and restore of a PostgreSQL database (BENCH_BACKUP_MB=${targetMb}; plan medium: 1 CPU, 1 GiB)`);
  if (typeof samples === 'string') {
    console.log(`  ${samples}`);
    return;
  }
  const { raw, broker, rss } = samples;
  const mb = samples.databaseBytes / MB;
  const rate = (ms: number) => `${(mb / (ms / 1000)).toFixed(1)} MB/s`;
  const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const ratio = (brokerMs: number, rawMs: number) => `${(rawMs / brokerMs).toFixed(2)}x`;
  const restoreNetMs = Math.max(1, broker.restoreMs - broker.plainProvisionMs);
  console.log(
    `  database ${mb.toFixed(0)} MB (pg_database_size, ${samples.rows.toLocaleString('en')} rows of random hex), loaded in ${seconds(samples.loadMs)}\n`,
  );
  console.log(
    table(
      ['operation', 'broker', 'broker MB/s', 'raw', 'raw MB/s', 'broker/raw (speed)'],
      [
        ['backup', seconds(broker.backupMs), rate(broker.backupMs), seconds(raw.backupMs), rate(raw.backupMs), ratio(broker.backupMs, raw.backupMs)],
        [
          'restore (new instance)',
          seconds(broker.restoreMs),
          rate(broker.restoreMs),
          seconds(raw.restoreMs),
          rate(raw.restoreMs),
          ratio(broker.restoreMs, raw.restoreMs),
        ],
        [
          'restore, less a plain provision',
          seconds(restoreNetMs),
          rate(restoreNetMs),
          seconds(raw.restoreMs),
          rate(raw.restoreMs),
          ratio(restoreNetMs, raw.restoreMs),
        ],
      ],
    ),
  );
  console.log();
  console.log(
    table(
      ['size', 'bytes'],
      [
        ['pg_dump -Fc (the dump)', broker.dumpBytes.toLocaleString('en')],
        ['broker object (gzip + AES-256-GCM)', broker.storedBytes.toLocaleString('en')],
        ['raw pg_dump -Fc | gzip', raw.backupBytes.toLocaleString('en')],
      ],
    ),
  );
  console.log(
    `\n  broker RSS: ${rss.beforeMb.toFixed(0)} MB before, peak ${rss.backupPeakMb.toFixed(0)} MB during the backup, ${rss.restorePeakMb.toFixed(0)} MB during the restore` +
      ` (process high-water mark ${rss.processPeakMb.toFixed(0)} MB, the whole bench run)`,
  );
  console.log(`
  MB/s are of the database size. broker backup: POST /broker/v1/instances/:id/backups, the listing polled every 200 ms until
          "succeeded" (the script's pg_dump -Fc streamed through gzip and AES-256-GCM into a local folder, fsync'd);
  broker restore: PUT with restore_from, last_operation polled until "succeeded": a whole provision (container, setup, login
          check) plus the restore; the last row takes off the ${seconds(broker.plainProvisionMs)} a plain provision of the plan took just before.
  raw:    docker exec -u postgres in the source container (same limits): pg_dump -Fc | gzip > /tmp/file, then gunzip -c file |
          pg_restore --single-transaction --no-owner into a new database (the flags of the offering's restore script).
  pg_dump (and pg_restore) run within the plan's 1 CPU in both; raw gzip shares that CPU with them, the broker's gzip and
  encryption run in the broker process. broker/raw (speed) above 1x: the broker is faster.`);
}
