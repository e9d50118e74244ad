import test from 'ava';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import http from 'node:http';
import { promisify } from 'node:util';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { type Browser, type Page } from 'playwright-core';
import { PACKAGE_ROOT } from '../src/config.js';
import { LABEL } from '../src/docker/types.js';
import { launchChromium } from './helpers/browser.js';
import { engine, PG, removeEverything, startTestBroker, startTestRedis, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir } from './helpers/spawn-broker.js';
import { storedRecord, waitUntil } from './helpers/wait.js';

// The instance page as users see it in Chromium: the pill and banner follow the container's real state (killed for
// real), log lines coloured by the level PostgreSQL states, the logs within a 1366x768 screen, a phone's 390 px
// showing the process command and the overview's state and endpoint, bindings by name, and the Restart button:
// confirmed, guarded against cross-site requests, and finished by another broker process when its own is killed.
const OUTPUT = path.join(PACKAGE_ROOT, 'test-output');
const REDIS_SERVICE = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
let env: TestBroker;
let browser: Browser;
const cleanups: Array<() => unknown> = [];
const run = promisify(execFile);

test.before(async () => {
  // No reconciler: a killed container stays down, so the page can be seen saying so.
  env = await startTestBroker(60, { reconcileSeconds: 0, portRange: { first: 47000, last: 47049 } });
  browser = await launchChromium();
});
test.after.always(async () => {
  await browser?.close();
  await env?.stop();
  await killAllBrokers();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

const containerOf = async (brokerId: string, instanceId: string) =>
  (await engine.listContainers({ [LABEL.broker]: brokerId, [LABEL.instance]: instanceId, [LABEL.role]: 'instance' }))[0]!.name;
const startedAt = async (container: string) => (await engine.inspectContainer(container))!.startedAt!;

/** Inside the viewport horizontally (the page never scrolls sideways) and not collapsed. */
async function onScreen(page: Page, selector: string): Promise<{ ok: boolean; box: unknown }> {
  const box = await page.locator(selector).first().boundingBox();
  const width = page.viewportSize()!.width;
  return { ok: Boolean(box && box.width > 0 && box.height > 0 && box.x >= 0 && box.x + box.width <= width + 0.5), box };
}

test.serial('the instance page: real state, level colours, layout on a desktop and a phone, bindings by name, restart', async (t) => {
  const { client } = env;
  const id = uniqueId('layout');
  const accepted = await client.provision(id, provisionBody(PG.service, PG.small, { context: { platform: 'cloudfoundry', instance_name: 'layout-db' } }));
  t.is((await client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const named = await client.bind(id, uniqueId('b'), {
    service_id: PG.service,
    plan_id: PG.small,
    context: { platform: 'cloudfoundry', binding_name: 'reporting' },
  });
  const unnamedId = uniqueId('b');
  const unnamed = await client.bind(id, unnamedId, { service_id: PG.service, plan_id: PG.small });
  const secrets = [named.body.credentials.password as string, unnamed.body.credentials.password as string];
  // A failed login: PostgreSQL writes FATAL to stderr, like every other line it writes.
  const marker = `intruder_${randomBytes(3).toString('hex')}`;
  await t.throwsAsync(() => new pg.Client({ connectionString: named.body.credentials.uri.replace(/\/\/[^@]+@/, `//${marker}:wrong@`) }).connect());
  await waitUntil(
    'the failed login in the container log',
    async () => (await engine.logs(await containerOf(env.config.brokerId, id), 50)).some((line) => line.text.includes(marker)),
    10_000,
    100,
  );

  const desktop = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  cleanups.push(() => desktop.close());
  const page = await desktop.newPage();
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(accepted.body.dashboard_url);
  await page.getByRole('heading', { name: 'layout-db' }).waitFor();
  await page.locator('#state.ok', { hasText: 'running' }).waitFor();

  await page.screenshot({ path: path.join(OUTPUT, 'dashboard-layout-desktop.png') });
  // Logs within the first screen: the card starts above the fold and its newest lines are on screen.
  const logsBox = (await page.locator('#logs').boundingBox())!;
  t.true(logsBox.y + 120 < 768, `the log box starts at ${logsBox.y}px`);
  const ready = page.locator('#logs .line', { hasText: 'database system is ready to accept connections' }).last();
  t.regex((await ready.getAttribute('class'))!, /\blevel-info\b/);
  t.regex((await ready.getAttribute('class'))!, /\bstderr\b/, 'PostgreSQL wrote it to stderr');
  const fatal = page.locator('#logs .line', { hasText: marker }).filter({ hasText: 'FATAL' }).first();
  t.regex((await fatal.getAttribute('class'))!, /\blevel-error\b/);
  const colour = (locator: typeof fatal) => locator.locator('.text').evaluate((node) => (globalThis as any).getComputedStyle(node).color as string);
  t.not(await colour(fatal), await colour(ready), 'an error line looks different from an info line');
  const neutral = page.locator('#logs .line:not([class*="level-"])');
  if ((await neutral.count()) > 0) t.is(await colour(neutral.first()), await colour(ready), 'a line without a level keeps the neutral colour');

  // Bindings by name (the platform's binding_name), else by id; never their credentials.
  const bindings = await page.locator('#bindings').innerText();
  t.regex(bindings, /reporting/);
  t.true(bindings.includes(unnamedId), bindings);
  const html = await page.content();
  for (const secret of secrets) t.false(html.includes(secret), 'no binding password in the page');

  // Cross-site requests are refused: a form on another site (a real browser, another origin), a request without
  // the page's CSRF token, and one from a wrong Origin.
  const container = await containerOf(env.config.brokerId, id);
  const before = await startedAt(container);
  const pageUrl = new URL(page.url());
  const restartUrl = `${pageUrl.origin}${pageUrl.pathname}/api/restart`;
  const evil = http.createServer((_request, response) => {
    response.setHeader('Content-Type', 'text/html');
    response.end(`<form id="f" method="POST" action="${restartUrl}"></form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise<void>((resolve) => evil.listen(0, 'localhost', resolve));
  cleanups.push(() => evil.close());
  const attack = await desktop.newPage();
  const refused = attack.waitForResponse((response) => response.url() === restartUrl);
  await attack.goto(`http://localhost:${(evil.address() as AddressInfo).port}/`);
  t.is((await refused).status(), 403);
  await attack.close();
  const cookies = (await page.context().cookies()).map((cookie) => `${cookie.name}=${cookie.value}`).join('; ');
  t.regex(cookies, /osb_dashboard_action=/, 'the page set the SameSite=Strict action cookie');
  const action = (await page.context().cookies()).find((cookie) => cookie.name === 'osb_dashboard_action')!;
  t.is(action.sameSite, 'Strict');
  t.true(action.httpOnly);
  const csrf = (await page.locator('meta[name="csrf-token"]').getAttribute('content'))!;
  const post = (headers: Record<string, string>) => fetch(restartUrl, { method: 'POST', headers: { Cookie: cookies, ...headers } });
  t.is((await post({ Origin: pageUrl.origin })).status, 403, 'no CSRF token');
  t.is((await post({ Origin: pageUrl.origin, 'X-CSRF-Token': `${csrf.slice(1)}x` })).status, 403, 'a wrong CSRF token');
  t.is((await post({ Origin: 'http://localhost:1', 'X-CSRF-Token': csrf })).status, 403, 'another Origin');
  t.is(
    (await post({ Origin: pageUrl.origin, 'X-CSRF-Token': csrf, Cookie: cookies.replace(/osb_dashboard_action=[^;]*(; )?/, '') })).status,
    403,
    'no Strict cookie',
  );
  t.is(await startedAt(container), before, 'nothing restarted it');

  // Killed for real: the pill turns red and the banner says how it ended and what to do.
  await run('docker', ['kill', container]);
  await page.locator('#state.bad', { hasText: 'exited' }).waitFor({ timeout: 10_000 });
  const banner = await page.locator('#explanation').innerText();
  t.regex(banner, /exited with code 137 \(killed: SIGKILL\) at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/);
  t.regex(banner, /Restart/);
  await page.screenshot({ path: path.join(OUTPUT, 'dashboard-layout-exited.png') });

  // The Restart button: confirmed in a dialog, its progress shown, and the container running again.
  await page.click('#restart');
  await page.locator('#restart-dialog[open]').waitFor();
  t.regex(await page.locator('#restart-dialog').innerText(), /Restart layout-db\?/);
  await page.click('#restart-confirm');
  await page.locator('#operation', { hasText: /Restarting|Restarted/ }).waitFor();
  await page.locator('#operation.ok', { hasText: 'Restarted: the service runs again and accepts a login.' }).waitFor({ timeout: 60_000 });
  await page.locator('#state.ok', { hasText: 'running' }).waitFor({ timeout: 10_000 });
  t.true((await page.locator('#explanation').isHidden()) || (await page.locator('#explanation').innerText()) === '');
  t.not(await startedAt(container), before, 'the container started again');
  t.deepEqual(errors, [], 'no script errors');

  // The broker API the CLI uses: 202 and an operation polled with last_operation; one at a time.
  const api = (method: string) => client.request(method, `/broker/v1/instances/${id}/restart`, undefined, { version: null });
  const again = await api('POST');
  t.is(again.status, 202, JSON.stringify(again.body));
  t.is((await api('POST')).body.error, 'ConcurrencyError');
  const done = await client.waitForInstance(id, again.body.operation, 60_000);
  t.deepEqual(done.body, { state: 'succeeded', description: 'Restarted: the service runs again and accepts a login.' });
  t.is((await client.request('POST', '/broker/v1/instances/nope/restart', undefined, { version: null })).status, 404);

  // A phone: the process command, whole, and nothing wider than the screen.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await phone.goto((await client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url);
  await phone.locator('#top td.command').first().waitFor();
  const command = phone.locator('#top td.command', { hasText: '/usr/lib/postgresql' }).first();
  const commandBox = await onScreen(phone, '#top td.command >> nth=0');
  t.true(commandBox.ok, JSON.stringify(commandBox.box));
  t.true((await command.boundingBox())!.x + (await command.boundingBox())!.width <= 390.5);
  t.true(await phone.evaluate('document.documentElement.scrollWidth <= window.innerWidth'), 'no sideways scrolling');
  await phone.close();

  // The overview on a phone: each instance's state and endpoint on screen.
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 },
    httpCredentials: { username: env.config.username, password: env.config.password },
  });
  const overview = await context.newPage();
  await overview.goto(`${client.url}/dashboard`);
  await overview.getByRole('link', { name: 'layout-db' }).waitFor();
  for (const selector of ['.overview .state', '.overview td.endpoint']) {
    const seen = await onScreen(overview, selector);
    t.true(seen.ok, `${selector}: ${JSON.stringify(seen.box)}`);
  }
  t.true(await overview.evaluate('document.documentElement.scrollWidth <= window.innerWidth'), 'no sideways scrolling');
  await context.close();
  await page.close();
});

test.serial('a broker process killed -9 in the middle of a restart: another process finishes it', async (t) => {
  const redis = await startTestRedis();
  cleanups.push(() => redis.stop());
  const brokerId = `r${randomBytes(4).toString('hex')}`;
  cleanups.push(() => removeEverything(brokerId));
  const state = tempStateDir();
  cleanups.push(() => state.remove());
  const brokerEnv = {
    PORT: String(await freePort()),
    BROKER_PASSWORD: 'restart-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    REDIS_URL: redis.url,
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: '47050-47099',
    BROKER_STATE_DIR: state.dir,
    BROKER_LEASE_SECONDS: '3',
    BROKER_SWEEP_SECONDS: '1',
    BROKER_RECONCILE_SECONDS: '0',
    LOG_LEVEL: 'info',
  };
  const first = await spawnBroker(brokerEnv);
  const id = uniqueId('restart');
  const accepted = await first.client.provision(id, provisionBody(REDIS_SERVICE.service, REDIS_SERVICE.small));
  t.is((await first.client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const container = await containerOf(brokerId, id);
  const before = await startedAt(container);

  const started = await first.client.request('POST', `/broker/v1/instances/${id}/restart`, undefined, { version: null });
  t.is(started.status, 202);
  const { operation } = started.body as { operation: string };
  // Killed while the container is down or coming up: the operation is left in progress with a lapsing lease.
  await waitUntil('the restart to stop the container', async () => !(await engine.inspectContainer(container))?.running, 30_000, 10);
  t.is((await first.kill('SIGKILL')).signal, 'SIGKILL');
  t.is((await storedRecord(redis.url, brokerId, 'operation', operation))?.state, 'in progress');

  const second = await spawnBroker(brokerEnv);
  await second.waitForLog((record) => record.msg === 'continuing an operation nobody holds' && record.operation === operation, 30_000);
  const done = await second.client.waitForInstance(id, operation, 60_000);
  t.deepEqual(done.body, { state: 'succeeded', description: 'Restarted: the service runs again and accepts a login.' });
  const after = await engine.inspectContainer(container);
  t.true(after?.running);
  t.not(after?.startedAt, before);
  await second.kill('SIGTERM');
});
