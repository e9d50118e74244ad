// The dashboard's backups panel in Debian's Chromium, against a real broker and engine: a PostgreSQL instance's
// backups listed, "Back up now" adding one that ends succeeded, its download link giving the dump, a cross-site POST
// refused, and a memcached instance's panel saying why it has no backups. Screenshots go to /tmp.
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type Browser } from 'playwright-core';
import type { Config } from '../src/config.js';
import { launchChromium } from './helpers/browser.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';

let env: TestBroker;
let browser: Browser;
let dir: string;

test.before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'osb-dashboard-backups-'));
  env = await startTestBroker(48, {
    backup: { store: { kind: 'local', dir }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 } },
  } as Partial<Config>);
  browser = await launchChromium(['--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync']);
});
test.after.always(async () => {
  await browser?.close();
  await env?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function ready(id: string, serviceId: string, planId: string, name: string): Promise<string> {
  const accepted = await env.client.provision(id, provisionBody(serviceId, planId, { context: { instance_name: name } }));
  const done = await env.client.waitForInstance(id, accepted.body.operation);
  if (done.body.state !== 'succeeded') throw new Error(`provision of ${name}: ${JSON.stringify(done.body)}`);
  return accepted.body.dashboard_url as string;
}

test.serial('the backups panel: list, back up now, download; cross-site actions refused', async (t) => {
  const id = uniqueId('dash');
  const dashboardUrl = await ready(id, PG.service, PG.small, 'orders-db');
  const started = await env.client.request('POST', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  t.is(started.status, 202, JSON.stringify(started.body));
  const first = started.body.id as string;
  await waitUntil(
    'the first backup to succeed',
    async () => {
      const listed = await env.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
      return listed.body.backups.find((backup: { id: string; state: string }) => backup.id === first && backup.state === 'succeeded');
    },
    120_000,
    250,
  );

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  t.is((await page.goto(dashboardUrl))?.status(), 200);

  // The backup made through the API is listed, with its state, origin and a download link.
  const firstRow = page.locator(`#backups tr[data-backup-id="${first}"]`);
  await firstRow.waitFor();
  t.is(await firstRow.getAttribute('data-state'), 'succeeded');
  t.regex(await firstRow.innerText(), /succeeded\s+manual\s+[\d.]+ (B|KiB|MiB)/);
  t.true(await page.locator('#backup-schedule').isVisible(), 'the schedule line is shown');

  // "Back up now": a second backup appears and ends succeeded, without reloading the page.
  await page.getByRole('button', { name: 'Back up now' }).click();
  await page.locator('#backup-message', { hasText: /Backup \S+ started\./ }).waitFor();
  await page.locator('#backups tr[data-state="succeeded"]').nth(1).waitFor({ timeout: 120_000 });
  const ids = await page.locator('#backups tr[data-backup-id]').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-backup-id')));
  t.is(ids.length, 2);
  t.is(ids[1], first, 'newest first');
  const listed = await env.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  t.deepEqual(
    listed.body.backups.map((backup: { id: string; state: string }) => [backup.id, backup.state]),
    ids.map((backupId) => [backupId, 'succeeded']),
  );

  // The download link gives the dump itself: PostgreSQL's custom format, as large as the broker recorded.
  const [download] = await Promise.all([page.waitForEvent('download'), firstRow.getByRole('link', { name: 'Download' }).click()]);
  t.is(download.suggestedFilename(), `orders-db-${first}.dump`);
  const saved = path.join(dir, 'downloaded.dump');
  await download.saveAs(saved);
  const dump = readFileSync(saved);
  t.is(dump.subarray(0, 5).toString(), 'PGDMP');
  t.is(dump.length, listed.body.backups.find((backup: { id: string }) => backup.id === first).dump_size);

  await page.screenshot({ path: '/tmp/dashboard-backups.png', fullPage: true });

  // A POST from another site, even with the session cookie, starts nothing; nor one without an Origin.
  const cookie = (await context.cookies()).map((entry) => `${entry.name}=${entry.value}`).join('; ');
  const apiUrl = `${new URL(page.url()).origin}${new URL(page.url()).pathname}/api/backups`;
  const crossSite = await fetch(apiUrl, { method: 'POST', headers: { Cookie: cookie, Origin: 'http://evil.example' } });
  t.is(crossSite.status, 403);
  t.regex(((await crossSite.json()) as { description: string }).description, /from the dashboard page itself/);
  const noOrigin = await fetch(apiUrl, { method: 'POST', headers: { Cookie: cookie } });
  t.is(noOrigin.status, 403);
  // From the page's origin but without the page's session token (a request forged with the cookies): refused too.
  const noToken = await fetch(apiUrl, { method: 'POST', headers: { Cookie: cookie, Origin: new URL(page.url()).origin } });
  t.is(noToken.status, 403);
  t.regex(((await noToken.json()) as { description: string }).description, /session token/);
  // The page's own request, with its token, is accepted: the checks are the origin and the token, not something else.
  const token = (await page.locator('meta[name="csrf-token"]').getAttribute('content')) ?? '';
  const sameSite = await fetch(apiUrl, { method: 'POST', headers: { Cookie: cookie, Origin: new URL(page.url()).origin, 'X-CSRF-Token': token } });
  t.is(sameSite.status, 202);
  await waitUntil(
    'the third backup to end',
    async () => {
      const now = await env.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
      return now.body.backups.length === 3 && now.body.backups.every((backup: { state: string }) => backup.state !== 'in progress');
    },
    120_000,
    250,
  );
  // Without the session, the panel's API is closed.
  t.is((await fetch(apiUrl)).status, 401);

  // Dark mode, phone width.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, colorScheme: 'dark' });
  await phone.goto((await env.client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url);
  await phone.locator('#backups tr[data-backup-id]').first().waitFor();
  await phone.screenshot({ path: '/tmp/dashboard-backups-phone-dark.png', fullPage: true });
  await phone.close();

  t.deepEqual(errors, [], 'no script errors');
  await context.close();
});

test.serial("a memcached instance's panel says it has no backups, and why", async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  const memcached = catalog.body.services.find((service: { name: string }) => service.name === 'memcached');
  const dashboardUrl = await ready(uniqueId('mc'), memcached.id, memcached.plans[0].id, 'sessions');
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(dashboardUrl);
  const caption = page.locator('#backups caption', { hasText: 'This instance has no backups' });
  await caption.waitFor();
  t.regex(await caption.innerText(), /^This instance has no backups: .*cache.*[^.]\.$/i);
  t.false(await page.getByRole('button', { name: 'Back up now' }).isVisible());
  await page.screenshot({ path: '/tmp/dashboard-backups-memcached.png', fullPage: true });
  await page.close();
});
