/**
 * Broker vs raw engine: provision-to-ready and bind latency, measured in the same run; GET /v2/catalog under load
 * next to a bare node:http server sending the same bytes.
 * Usage: BENCH_N=5 npm run bench
 * BENCH_ENGINE_N=3 rounds per offering in the every-engine table (0 leaves it out); BENCH_CATALOG_SECONDS=5 of load on
 * the catalog for each server (0 leaves that line out); BENCH_BACKUP_MB=512 of PostgreSQL data backed up and restored
 * through the broker next to raw pg_dump | gzip (0 leaves that table out).
 */
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { startBrokerSide, type BrokerSide } from './broker-side.js';
import { docker, IMAGE, rawBind, rawLeftovers, removeRaw, startRaw } from './raw.js';
import { median, ms, p95, table } from './stats.js';
import { benchEngines, engineTableRow, type EngineRow } from './engines.js';
import { benchDashboard, LOG_LINES, type DashboardSamples } from './dashboard.js';
import { benchCatalog, CATALOG_CONNECTIONS, type CatalogSamples } from './catalog.js';
import { benchBackup, reportBackup } from './backup.js';
import { loadConfig } from '../src/config.js';
import { loadCatalog } from '../src/catalog/load.js';

const N = Number(process.env.BENCH_N || 5);
if (!Number.isInteger(N) || N < 1) throw new Error(`BENCH_N must be a positive integer (got "${process.env.BENCH_N}")`);
/** Rounds per offering in the every-engine table; 0 leaves that table out. */
const ENGINE_N = Number(process.env.BENCH_ENGINE_N ?? 3);
if (!Number.isInteger(ENGINE_N) || ENGINE_N < 0) throw new Error(`BENCH_ENGINE_N must be a whole number (got "${process.env.BENCH_ENGINE_N}")`);
/** Seconds of load on the catalog, for the broker and for the bare server each; 0 leaves that line out. */
const CATALOG_SECONDS = Number(process.env.BENCH_CATALOG_SECONDS ?? 5);
if (!Number.isInteger(CATALOG_SECONDS) || CATALOG_SECONDS < 0 || CATALOG_SECONDS > 60) {
  throw new Error(`BENCH_CATALOG_SECONDS must be a whole number from 0 to 60 (got "${process.env.BENCH_CATALOG_SECONDS}")`);
}
/** Megabytes of PostgreSQL data for the backup table; 0 leaves it out. */
const BACKUP_MB = Number(process.env.BENCH_BACKUP_MB ?? 512);
if (!Number.isInteger(BACKUP_MB) || BACKUP_MB < 0) throw new Error(`BENCH_BACKUP_MB must be a whole number (got "${process.env.BENCH_BACKUP_MB}")`);

let side: BrokerSide | undefined;
let cleaning: Promise<void> | undefined;

/** Removes everything the benchmark made; safe to call twice (finally block and Ctrl-C). */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const name of [...rawLeftovers.keys()]) await removeRaw(name).catch((error) => console.error(`cleanup: ${error.message}`));
    await side?.stop().catch((error) => console.error(`cleanup: ${error.message}`));
  })();
  return cleaning;
}

process.once('SIGINT', () => {
  console.error('\ninterrupted; removing what the benchmark created');
  void cleanup().finally(() => process.exit(130));
});

const bindingId = () => `bench-b-${randomBytes(6).toString('hex')}`;

async function main(): Promise<void> {
  const cpus = os.cpus();
  const dockerVersion = await docker(['version', '--format', '{{.Server.Version}}']);
  const machine = `machine: ${cpus.length} cpus (${cpus[0]?.model.trim() ?? 'unknown'}), node ${process.version}, docker server ${dockerVersion}; N=${N}`;

  side = await startBrokerSide();
  const broker = side;

  // First, while no container runs: the catalog under load, the broker and then the bare server.
  let catalog: CatalogSamples | undefined;
  if (CATALOG_SECONDS > 0) {
    process.stderr.write(`GET /v2/catalog under load, ${CATALOG_SECONDS} s each ...\n`);
    catalog = await benchCatalog(broker.url, broker.platformHeaders, CATALOG_SECONDS);
  }

  // One untimed round each: first use of the image, page cache, lazy module loading.
  process.stderr.write('warm-up ...\n');
  await broker.deprovision((await broker.provision()).id);
  await removeRaw((await startRaw()).name);

  // Broker and raw alternate so drift in the machine's load hits both alike.
  const provision = { broker: [] as number[], raw: [] as number[] };
  const phases = { broker: [] as Array<Record<string, number>>, raw: [] as Array<Record<string, number>> };
  for (let run = 1; run <= N; run++) {
    process.stderr.write(`provision ${run}/${N} ...\n`);
    const instance = await broker.provision();
    provision.broker.push(instance.totalMs);
    phases.broker.push(instance.phases);
    await broker.deprovision(instance.id);

    const raw = await startRaw();
    provision.raw.push(raw.totalMs);
    phases.raw.push(raw.phases);
    await removeRaw(raw.name);
  }

  process.stderr.write(`bind x${N} ...\n`);
  const bind = { broker: [] as number[], raw: [] as number[] };
  const instance = await broker.provision();
  const raw = await startRaw();
  const bindings: string[] = [];
  for (let run = 0; run < N; run++) {
    const id = bindingId();
    bindings.push(id);
    bind.broker.push(await broker.bind(instance.id, id));
    bind.raw.push(await rawBind(raw.name));
  }
  for (const id of bindings) await broker.unbind(instance.id, id);
  await broker.deprovision(instance.id);
  await removeRaw(raw.name);

  const config = loadConfig();
  const engines = ENGINE_N > 0 ? await benchEngines(broker, loadCatalog(config.catalogDir, config.imagePrefix), ENGINE_N) : [];
  process.stderr.write('dashboard with a 100,000-line log ...\n');
  const dashboard = await benchDashboard(broker, N);
  const backup =
    BACKUP_MB > 0 ? await benchBackup(BACKUP_MB, (line) => process.stderr.write(`${line}\n`)).catch((error: Error) => `failed: ${error.message}`) : undefined;
  report(machine, provision, bind, phases);
  if (catalog) reportCatalog(catalog);
  reportEngines(engines);
  reportDashboard(dashboard);
  if (backup) reportBackup(backup, BACKUP_MB);
}

function reportCatalog(samples: CatalogSamples): void {
  const { broker, bare } = samples;
  const perSecond = (value: number) => Math.round(value).toLocaleString('en');
  const p99 = (value: number) => `${value.toFixed(0)} ms`;
  console.log(
    `\nGET /v2/catalog (${samples.bytes.toLocaleString('en')} bytes) under load: ${CATALOG_CONNECTIONS} connections, ${samples.seconds} s each, loopback\n`,
  );
  console.log(
    table(
      ['measure', 'broker', 'bare node:http', 'broker/bare'],
      [
        [
          'requests/s',
          perSecond(broker.requestsPerSecond),
          perSecond(bare.requestsPerSecond),
          `${(broker.requestsPerSecond / bare.requestsPerSecond).toFixed(2)}x`,
        ],
        ['p99 latency', p99(broker.p99Ms), p99(bare.p99Ms), bare.p99Ms > 0 ? `${(broker.p99Ms / bare.p99Ms).toFixed(2)}x` : '-'],
      ],
    ),
  );
  if (broker.failures + bare.failures > 0) console.log(`  failed requests: broker ${broker.failures}, bare ${bare.failures}`);
  console.log(
    '  broker: the full request path (basic auth, X-Broker-API-Version, a JSON access log line and the request metrics per request, the catalog' +
      '\n          serialised once; answered ahead of Koa by src/http/catalog-fast-path.ts);' +
      '\n  bare:   node:http answering every request with the same bytes; load from autocannon in a worker thread, one untimed second each first.',
  );
}

function reportDashboard(samples: DashboardSamples | string): void {
  console.log(`\ndashboard of an instance with a ${LOG_LINES.toLocaleString('en')}-line log`);
  if (typeof samples === 'string') {
    console.log(`  ${samples}`);
    return;
  }
  console.log();
  console.log(
    table(
      ['measure', 'median', 'p95'],
      [
        ['open link -> first log lines on screen (Chromium)', ms(median(samples.firstLinesMs)), ms(p95(samples.firstLinesMs))],
        ['docker logs --tail 500 (CLI, same container)', ms(median(samples.dockerTailMs)), ms(p95(samples.dockerTailMs))],
      ],
    ),
  );
  console.log('  the page arrives with the latest 500 lines already in it; its script follows on from them.');
}

function reportEngines(rows: EngineRow[]): void {
  if (rows.length === 0) return;
  console.log(`
provision -> ready for every offering (first plan; N=${ENGINE_N} each)
`);
  console.log(table(['offering', 'broker median', 'broker p95', 'raw median', 'raw p95', 'broker/raw'], rows.map(engineTableRow)));
  console.log(`
  broker: PUT with accepts_incomplete, last_operation every 50 ms until "succeeded".
  raw:    docker run -d of the same image with the plan's limits, capabilities and published ports, then poll /osb/ready
          and run /osb/setup and /osb/check (where the offering has them): the steps the broker takes before "succeeded".`);
}

function report(
  machine: string,
  provision: Record<'broker' | 'raw', number[]>,
  bind: Record<'broker' | 'raw', number[]>,
  phases: Record<'broker' | 'raw', Array<Record<string, number>>>,
): void {
  const row = (name: string, samples: Record<'broker' | 'raw', number[]>) => [
    name,
    ms(median(samples.broker)),
    ms(p95(samples.broker)),
    ms(median(samples.raw)),
    ms(p95(samples.raw)),
    `${(median(samples.broker) / median(samples.raw)).toFixed(2)}x`,
  ];
  console.log(`\nosb-docker-broker vs the raw engine's own docker CLI\n${machine}\n`);
  console.log(
    table(['operation', 'broker median', 'broker p95', 'raw median', 'raw p95', 'broker/raw'], [row('provision -> ready', provision), row('bind', bind)]),
  );

  // Per-phase medians: broker phases come from its last_operation descriptions, so they are +-50 ms.
  const steps: Array<[string, string]> = [
    ['accept+port', 'accept (PUT, Redis, port pick)'],
    ['create+start', 'create+start container'],
    ['ready', 'wait for /osb/ready'],
    ['setup', '/osb/setup'],
    ['login', 'login check'],
  ];
  const phase = (runs: Array<Record<string, number>>, step: string) => median(runs.map((run) => run[step] ?? 0));
  const gaps = steps.map(([step, label]) => ({ label, broker: phase(phases.broker, step), raw: phase(phases.raw, step) }));
  console.log();
  console.log(
    table(
      ['provision phase (medians)', 'broker', 'raw', 'gap'],
      gaps.map(({ label, broker, raw }) => [label, ms(broker), ms(raw), `${broker >= raw ? '+' : ''}${(broker - raw).toFixed(0)} ms`]),
    ),
  );
  const biggest = [...gaps]
    .sort((a, b) => b.broker - b.raw - (a.broker - a.raw))
    .filter((gap) => gap.broker > gap.raw)
    .slice(0, 3);
  console.log(
    `\nwhat's in the gap: ${biggest.map((gap) => `${gap.label} +${(gap.broker - gap.raw).toFixed(0)} ms`).join(', ') || 'nothing measurable'}` +
      '\n  (broker phases are read from its last_operation progress descriptions, polled every 50 ms, so +-50 ms;' +
      '\n   broker login check = /osb/check exec + published-port probe + final Redis writes; raw = one pg login)',
  );

  console.log(`
notes:
  provision, broker: PUT /v2/service_instances/:id?accepts_incomplete=true (plan small), then last_operation every 50 ms until "succeeded"; deprovision after each run (not timed).
  provision, raw:    docker run -d ${IMAGE} with a fresh named volume, -p 127.0.0.1:<free port>, --memory 256m --cpus 0.5 --pids-limit 128
                     --security-opt no-new-privileges --cap-drop ALL; then, as the broker does, poll /osb/ready and run /osb/setup once (docker exec -u postgres),
                     then loop until a password login through the published port succeeds (pg client).
  bind, broker:      PUT .../service_bindings/:id (synchronous) on a ready instance, distinct binding ids; unbound afterwards (not timed).
  bind, raw:         docker exec -u postgres ... /osb/bind (one CLI call each, so it includes the docker CLI's own start-up).
  p95 is nearest-rank: with fewer than 20 runs it is the slowest run. One untimed warm-up provision per side first.`);
}

try {
  await main();
} finally {
  await cleanup();
}
