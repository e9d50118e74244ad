import test from 'ava';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { type Browser } from 'playwright-core';
import { PACKAGE_ROOT } from '../src/config.js';
import { launchChromium } from './helpers/browser.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

// The dashboard as a developer sees it, in Debian's Chromium: processes, startup logs, a new line appearing live,
// and no password anywhere in the page. Screenshots go to test-output/.
const OUTPUT = path.join(PACKAGE_ROOT, 'test-output');
let env: TestBroker;
let browser: Browser;

test.before(async () => {
  mkdirSync(OUTPUT, { recursive: true });
  env = await startTestBroker(17);
  browser = await launchChromium(['--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync']);
});
test.after.always(async () => {
  await browser?.close();
  await env?.stop();
});

test('a developer opens the dashboard_url: processes, startup logs, live log lines, no secrets', async (t) => {
  const { client } = env;
  const id = uniqueId('browser');
  const accepted = await client.provision(
    id,
    provisionBody(PG.service, PG.small, { context: { instance_name: 'orders-db' }, parameters: { database: 'orders' } }),
  );
  t.is((await client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const bindings = await Promise.all(['web', 'worker'].map((name) => client.bind(id, name, { service_id: PG.service, plan_id: PG.small })));
  const secrets = bindings.map((reply) => reply.body.credentials.password as string);
  t.is(secrets.length, 2);

  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  const response = await page.goto(accepted.body.dashboard_url);
  t.is(response?.status(), 200);
  t.is(new URL(page.url()).search, '', 'the token is gone from the address bar');
  await page.getByRole('heading', { name: 'orders-db' }).waitFor();

  // The engine's process list, with the postgres processes.
  await page.locator('#top tbody tr').first().waitFor();
  const commands = await page.locator('#top td.command').allTextContents();
  t.true(
    commands.some((command) => command.includes('/usr/lib/postgresql/15/bin/postgres')),
    commands.join(' | '),
  );
  t.true(commands.some((command) => command.includes('postgres: checkpointer')));

  // The startup lines of the server log.
  await page.locator('#logs .line').first().waitFor();
  await page.locator('#logs', { hasText: 'database system is ready to accept connections' }).waitFor();
  // The newest line is on screen, inside the scrolled log box (not merely in the DOM).
  const box = (await page.locator('#logs').boundingBox())!;
  const newest = (await page.locator('#logs .line').last().boundingBox())!;
  t.true(newest.height > 0 && newest.y >= box.y && newest.y + newest.height <= box.y + box.height + 1, JSON.stringify({ box, newest }));
  // PostgreSQL writes every line to stderr; the colour is the level each line states.
  t.true((await page.locator('#logs .line.level-info', { hasText: 'database system is ready to accept connections' }).count()) > 0);
  t.is(await page.locator('#details dd', { hasText: 'small' }).count(), 1);
  t.is(await page.locator('#details dd', { hasText: '127.0.0.1:' }).count(), 1);
  t.regex(await page.locator('#bindings-heading').innerText(), /Bindings\s+2/);
  t.is(await page.locator('#bindings li').count(), 2);

  // A failed login writes a new line to the server log; it appears live.
  const marker = `intruder_${Date.now()}`;
  const uri = bindings[0]!.body.credentials.uri.replace(/\/\/[^@]+@/, `//${marker}:wrong-password@`);
  const intruder = new pg.Client({ connectionString: uri });
  await t.throwsAsync(() => intruder.connect());
  const appeared = Date.now();
  await page.locator('#logs .line', { hasText: marker }).first().waitFor({ timeout: 5000 });
  t.log(`the failed login appeared in the page after ${Date.now() - appeared} ms`);

  // The filter narrows the lines.
  await page.fill('#log-filter', marker);
  t.true((await page.locator('#logs .line').count()) >= 1);
  t.is(await page.locator('#logs .line').count(), await page.locator('#logs .line', { hasText: marker }).count());
  await page.fill('#log-filter', '');

  await page.screenshot({ path: path.join(OUTPUT, 'dashboard-instance.png'), fullPage: true });
  const html = await page.content();
  for (const secret of secrets) t.false(html.includes(secret), 'no binding password in the page');
  t.false(/ADMIN_PASSWORD|BINDING_PASSWORD/.test(html));
  t.deepEqual(errors, [], 'no script errors');

  // Another browser without the cookie is not let in by the clean URL.
  const stranger = await browser.newPage();
  t.is((await stranger.goto(page.url()))?.status(), 401);
  t.regex(await stranger.locator('body').innerText(), /Open this dashboard through the link/);
  await stranger.close();

  // Phone size, dark mode, through a fresh link from the platform's fetch of the instance.
  const fresh = (await client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url;
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, colorScheme: 'dark' });
  await phone.goto(fresh);
  await phone.getByRole('heading', { name: 'orders-db' }).waitFor();
  await phone.locator('#top tbody tr').first().waitFor();
  await phone.screenshot({ path: path.join(OUTPUT, 'dashboard-instance-phone-dark.png'), fullPage: true });
  t.false((await phone.content()).includes(secrets[0]!));
  await phone.close();

  // The overview, behind the broker's credentials.
  const context = await browser.newContext({
    viewport: { width: 1100, height: 500 },
    httpCredentials: { username: env.config.username, password: env.config.password },
  });
  const overview = await context.newPage();
  await overview.goto(`${client.url}/dashboard`);
  await overview.getByRole('link', { name: 'orders-db' }).waitFor();
  await overview.screenshot({ path: path.join(OUTPUT, 'dashboard-overview.png'), fullPage: true });
  await overview.getByRole('link', { name: 'orders-db' }).click();
  await overview.getByRole('heading', { name: 'orders-db' }).waitFor();
  t.is(await overview.locator('#instance-id').innerText(), id, 'the overview link opens that instance');
  await context.close();
  await page.close();
});
