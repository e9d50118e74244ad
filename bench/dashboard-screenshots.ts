/**
 * The README's dashboard screenshots (docs/dashboard-*.png), taken from a real broker and PostgreSQL instance with
 * some work on it, once the usage charts have a few minutes' worth of samples: desktop light (the first screen of
 * 1366x768), desktop dark (the whole page), and a phone (390 px).
 *
 * npm run build && node dist/bench/dashboard-screenshots.js
 */
import path from 'node:path';
import pg from 'pg';
import { chromium } from 'playwright-core';
import { PACKAGE_ROOT } from '../src/config.js';
import { waitFor } from '../src/wait.js';
import { PG } from '../test/helpers/env.js';

// Samples every 2 s instead of 10, so the charts fill in about a minute.
process.env.BROKER_USAGE_SAMPLE_SECONDS ??= '2';
process.env.BROKER_USAGE_DISK_SECONDS ??= '4';
const { startBrokerSide } = await import('./broker-side.js');

const DOCS = path.join(PACKAGE_ROOT, 'docs');
const SAMPLES = Number(process.env.SCREENSHOT_SAMPLES) || 30;
const broker = await startBrokerSide();
const headers = { ...broker.platformHeaders, 'Content-Type': 'application/json' };
const call = async (method: string, url: string, body?: unknown) => {
  const response = await fetch(`${broker.url}${url}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return (await response.json()) as Record<string, any>;
};
try {
  const id = 'b7e5c1f2-orders';
  const context = { platform: 'cloudfoundry', instance_name: 'orders-db' };
  await call('PUT', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: PG.service,
    plan_id: PG.small,
    organization_guid: 'org-1',
    space_guid: 'space-1',
    context,
  });
  await waitFor(async () => ((await call('GET', `/v2/service_instances/${id}/last_operation`)).state === 'succeeded' ? true : undefined), {
    intervalMs: 250,
    timeoutMs: 120_000,
  });
  const bind = (bindingId: string, name: string) =>
    call('PUT', `/v2/service_instances/${id}/service_bindings/${bindingId}`, {
      service_id: PG.service,
      plan_id: PG.small,
      bind_resource: { app_guid: `app-${name}` },
      context: { platform: 'cloudfoundry', binding_name: name },
    });
  const web = await bind('5a0c2e1d-web', 'orders-web');
  await bind('9f3b7a44-reporting', 'orders-reporting');

  // Some work: a table that grows, a few heavy queries, a warning and a failed login in the log.
  const client = new pg.Client({ connectionString: web.credentials.uri as string });
  await client.connect();
  await client.query('CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text, pad text)');
  await client.query('COMMIT'); // WARNING:  there is no transaction in progress
  const wrong = new pg.Client({ connectionString: (web.credentials.uri as string).replace(/\/\/[^:]+:[^@]+@/, '//mallory:guess@') });
  await wrong.connect().catch(() => undefined);
  const history = async () => {
    const page = await browserPage.request.get(`${pageUrl}/api/usage/history`);
    return ((await page.json()) as { time: number[] }).time.length;
  };

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const desktop = await browser.newContext({ viewport: { width: 1366, height: 768 }, colorScheme: 'light' });
  const browserPage = await desktop.newPage();
  await browserPage.goto((await call('GET', `/v2/service_instances/${id}`)).dashboard_url as string);
  const pageUrl = browserPage.url();
  for (let round = 0; (await history()) < SAMPLES; round++) {
    await client.query("INSERT INTO orders (item, pad) SELECT 'item-' || g, repeat('x', 500) FROM generate_series(1, $1::int) g", [2000 + (round % 5) * 3000]);
    if (round % 3 === 0) await client.query('SELECT count(*) FROM generate_series(1, 3000000)');
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  await client.end();
  await browserPage.reload();
  await browserPage.locator('#top tbody tr').first().waitFor();
  await browserPage.waitForTimeout(2500); // the charts and meters draw after their first answers
  await browserPage.screenshot({ path: path.join(DOCS, 'dashboard-instance.png') });

  const dark = await browser.newContext({ viewport: { width: 1366, height: 768 }, colorScheme: 'dark' });
  const darkPage = await dark.newPage();
  await darkPage.goto((await call('GET', `/v2/service_instances/${id}`)).dashboard_url as string);
  await darkPage.locator('#top tbody tr').first().waitFor();
  await darkPage.waitForTimeout(2500);
  await darkPage.screenshot({ path: path.join(DOCS, 'dashboard-instance-dark.png'), fullPage: true });

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const phonePage = await phone.newPage();
  await phonePage.goto((await call('GET', `/v2/service_instances/${id}`)).dashboard_url as string);
  await phonePage.locator('#top tbody tr').first().waitFor();
  await phonePage.waitForTimeout(2500);
  // The first screen, and the processes further down (their commands wrap on a phone).
  await phonePage.screenshot({ path: path.join(DOCS, 'dashboard-instance-phone.png') });
  await phonePage.locator('#top').scrollIntoViewIfNeeded();
  await phonePage.screenshot({ path: path.join(DOCS, 'dashboard-instance-phone-processes.png') });

  // The overview an operator opens at /dashboard with the broker's credentials: state, endpoint and disk per instance.
  const operator = await browser.newContext({
    viewport: { width: 1366, height: 400 },
    extraHTTPHeaders: { Authorization: broker.platformHeaders.Authorization! },
  });
  const overview = await operator.newPage();
  await overview.goto(`${broker.url}/dashboard`);
  await overview.screenshot({ path: path.join(DOCS, 'dashboard-overview.png'), fullPage: true });

  await browser.close();
  console.log(
    `wrote ${['dashboard-instance.png', 'dashboard-instance-dark.png', 'dashboard-instance-phone.png', 'dashboard-instance-phone-processes.png', 'dashboard-overview.png'].map((file) => `docs/${file}`).join(', ')}`,
  );
} finally {
  await broker.stop();
}
