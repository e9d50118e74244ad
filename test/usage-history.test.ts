import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Docker from 'dockerode';
import pg from 'pg';
import { type Browser, type Page } from 'playwright-core';
import { PACKAGE_ROOT } from '../src/config.js';
import { launchChromium } from './helpers/browser.js';
import { engine, PG, redisKeys, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';
import { catalogCopy } from './helpers/catalog.js';

// Usage over time with the real engine, Redis, PostgreSQL and Chromium: a broker sampling every second (the disk
// every two), a PostgreSQL instance kept busy by a client, its charts drawn in the page, a table filling the volume
// past a small disk_mb, Redis hanging for a moment, and the container killed.
const OUTPUT = path.join(PACKAGE_ROOT, 'test-output');
const prefix = `osb-usage-test-${process.pid}/`;
/** The small plan's soft disk limit here: a fresh PostgreSQL data folder takes about 70 MiB, the filled one 140 and more. */
const DISK_MB = 100;
let env: TestBroker;
let browser: Browser;

/** The catalog's PostgreSQL with a small plan of DISK_MB. */
const tinyDiskCatalog = () =>
  catalogCopy('postgresql', { edit: (service) => (service.offering.plans.find((plan: { id: string }) => plan.id === PG.small).limits.disk_mb = DISK_MB) });

test.before(async () => {
  mkdirSync(OUTPUT, { recursive: true });
  // No reconciler: a killed container stays down, so the page must say that samples stopped.
  env = await startTestBroker(58, { catalogDir: tinyDiskCatalog(), imagePrefix: prefix, usageSampleSeconds: 1, usageDiskSeconds: 2, reconcileSeconds: 0 });
  browser = await launchChromium();
});
test.after.always(async () => {
  await browser?.close();
  await env?.stop();
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${prefix}postgresql:15.0.2`], { stdio: 'ignore' });
  } catch {
    // already gone
  }
});

/** The history endpoint as the page's own script reads it (same session cookie). */
const history = (page: Page): Promise<any> => page.evaluate('fetch(`${location.pathname}/api/usage/history`).then((response) => response.json())');
const listed = async (id: string) => ((await env.client.request('GET', '/broker/v1/instances')).body.instances as any[]).find((instance) => instance.id === id);
const metrics = async () => (await env.client.request('GET', '/metrics')).body as string;
/** The drawn series and points of one chart, as the page reports them after uPlot drew it. */
const drawn = (page: Page, chart: string) =>
  page.locator(`#chart-${chart}`).evaluate((node: any) => ({ series: Number(node.dataset.series ?? 0), points: Number(node.dataset.points ?? 0) }));

test.serial('a busy PostgreSQL instance: sampled history, charts with points, disk over a small disk_mb, Redis hanging, a killed container', async (t) => {
  const { client } = env;
  const id = uniqueId('usage');
  const accepted = await client.provision(id, provisionBody(PG.service, PG.small, { context: { instance_name: 'usage-db' } }));
  t.is((await client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const credentials = (await client.bind(id, 'app', { service_id: PG.service, plan_id: PG.small })).body.credentials;
  const db = new pg.Client({ connectionString: credentials.uri });
  db.on('error', () => {}); // the container is killed at the end, with this client's connection closed before
  await db.connect();

  // Load: queries that keep the server's CPU busy while the sampler takes its samples.
  let busy = true;
  const load = (async () => {
    while (busy) await db.query('SELECT count(*) FROM generate_series(1, 2000000) AS g WHERE g % 7 = 3');
  })();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  t.is((await page.goto(accepted.body.dashboard_url))?.status(), 200);
  const busyHistory = await waitUntil(
    'samples whose CPU is above 0',
    async () => {
      const body = await history(page);
      const sent = body.networkTxBytesPerSecond.some((rate: number | null) => rate !== null && rate > 0);
      return body.cpuPercent.filter((cpu: number | null) => cpu !== null && cpu > 5).length >= 3 && sent && body;
    },
    30_000,
    500,
  );
  busy = false;
  await load;
  t.is(busyHistory.sampleSeconds, 1);
  t.true(busyHistory.memoryBytes.every((bytes: number) => bytes > 0));
  t.is(busyHistory.memoryLimitBytes, 256 * 1024 * 1024, "the plan's memory limit");
  t.true(
    busyHistory.networkTxBytesPerSecond.some((rate: number | null) => rate !== null && rate > 0),
    'query results went out',
  );
  t.log(
    `CPU of the busy samples: ${busyHistory.cpuPercent
      .filter((cpu: number | null) => cpu !== null)
      .map((cpu: number) => cpu.toFixed(0))
      .join(' ')} %`,
  );

  // The charts as drawn in the page: every series of CPU, memory, network and block I/O has points.
  await waitUntil('the CPU chart drawn with the busy samples', async () => (await drawn(page, 'cpu')).points >= 3, 15_000, 250);
  for (const [chart, series] of [
    ['cpu', 1],
    ['memory', 2],
    ['network', 2],
    ['blockio', 2],
  ] as const) {
    const { series: withPoints, points } = await drawn(page, chart);
    t.is(withPoints, series, `${chart}: every series has points`);
    t.true(points >= 3 * series, `${chart}: ${points} points`);
  }
  t.true((await drawn(page, 'disk')).points >= 1, 'the disk chart has its first measure');
  t.regex(await page.locator('#charts-status').innerText(), /Every 1 s/);

  // The disk: under the limit at first, then a table fills the volume past it.
  const before = await waitUntil('a first disk measure in the listing', async () => (await listed(id))?.disk);
  t.is(before.limit_bytes, DISK_MB * 1024 * 1024);
  t.false(before.over, `a fresh instance takes ${before.used_bytes} bytes`);
  t.true(await page.locator('#disk-warning').isHidden());
  await db.query('CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS padding FROM generate_series(1, 70000) AS g');
  const after = await waitUntil(
    'the listing to show the volume over disk_mb',
    async () => ((await listed(id))?.disk?.over ? (await listed(id)).disk : undefined),
    30_000,
    500,
  );
  t.true(after.used_bytes > DISK_MB * 1024 * 1024 && after.used_bytes > before.used_bytes, `grew from ${before.used_bytes} to ${after.used_bytes} bytes`);
  await page.locator('#disk-warning').waitFor({ state: 'visible', timeout: 20_000 });
  t.regex(await page.locator('#disk-warning').innerText(), /over the plan's 100 MiB.*soft limit/s);
  const text = await metrics();
  const used = new RegExp(`^osb_instance_disk_used_bytes\\{instance_id="${id}",offering="postgresql",plan="small"\\} (\\d+)$`, 'm').exec(text);
  t.truthy(used, 'the used bytes gauge');
  t.true(Number(used![1]) > DISK_MB * 1024 * 1024);
  t.regex(text, new RegExp(`^osb_instance_disk_limit_bytes\\{instance_id="${id}",offering="postgresql",plan="small"\\} ${DISK_MB * 1024 * 1024}$`, 'm'));
  t.false(text.includes(credentials.password as string));
  await page.screenshot({ path: path.join(OUTPUT, 'dashboard-usage-charts.png'), fullPage: true });

  // A phone in dark mode: the charts fit the screen.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, colorScheme: 'dark' });
  await phone.goto((await client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url);
  await waitUntil('the phone charts drawn', async () => (await drawn(phone, 'memory')).points > 0, 15_000, 250);
  const width = await phone.locator('#chart-cpu canvas').evaluate((canvas: any) => canvas.getBoundingClientRect().right as number);
  t.true(width <= 390, `the CPU chart ends at ${width} px`);
  t.false(await phone.evaluate('document.documentElement.scrollWidth > innerWidth'), 'no sideways scrolling');
  await phone.screenshot({ path: path.join(OUTPUT, 'dashboard-usage-charts-phone-dark.png'), fullPage: true });
  await phone.close();

  // Redis hangs for a moment (paused): the sampler says so once, the page keeps its charts, sampling goes on after.
  const docker = new Docker();
  const hangStarted = Date.now();
  await docker.getContainer(env.redisContainer).pause();
  try {
    await page.locator('#charts-status', { hasText: 'cannot be read just now' }).waitFor({ timeout: 20_000 });
    t.true((await drawn(page, 'cpu')).points > 0, 'the charts keep what they had');
    await waitUntil('the sampler to say it waits for the store', async () => env.logs.some((line) => line.includes('usage sampling waits')), 20_000, 100);
  } finally {
    await docker.getContainer(env.redisContainer).unpause();
  }
  await waitUntil(
    'a sample taken after Redis answered again',
    async () => {
      const body = await history(page);
      return body.time.at(-1) * 1000 > Date.now() - 1500 && body.time.at(-1) * 1000 > hangStarted;
    },
    20_000,
    250,
  );
  const waits = env.logs.filter((line) => line.includes('usage sampling waits: the state store does not answer'));
  t.is(waits.length, 1, 'logged once for the whole outage');
  t.is(env.logs.filter((line) => line.includes('could not sample')).length, 0, 'no line per sample');

  // The container killed: no more samples, and the page says since when.
  await db.end().catch(() => {});
  const container = (await engine.listContainers({ 'io.osb-broker.instance': id }))[0]!;
  execFileSync('docker', ['kill', container.name], { stdio: 'ignore' });
  await page.locator('#charts-status', { hasText: 'No samples since' }).waitFor({ timeout: 20_000 });
  t.regex(await page.locator('#charts-status').innerText(), /the container is not running/);
  t.deepEqual(errors, [], 'no script errors');
  await page.close();

  // Deprovisioned: the samples go with the instance.
  const gone = await client.deprovision(id, PG.service, PG.small);
  await client.waitForInstance(id, gone.body.operation);
  t.deepEqual(await redisKeys(env.redisUrl, `osb:${env.config.brokerId}:*${id}*`).then((keys) => keys.filter((key) => /:(usage|disk):/.test(key))), []);
});
