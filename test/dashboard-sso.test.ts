import test from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import { type Browser, type BrowserContext, type Page } from 'playwright-core';
import { PACKAGE_ROOT } from '../src/config.js';
import { launchChromium } from './helpers/browser.js';
import { startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { spawnBroker, tempStateDir } from './helpers/spawn-broker.js';
import { startCloudControllerStandIn, startUaaStandIn, type DashboardClient, type StandIn } from './helpers/uaa-stand-in.js';

// Dashboard single sign-on as on Cloud Foundry, in Chromium: the broker sends a visitor to the platform's login
// (oidc-provider standing in for UAA), and opens the dashboard when Cloud Controller (a stand-in answering from a
// table) says the user may manage the instance. Ports: the broker 46792 (a replica process 46793), the UAA stand-in
// 46790, Cloud Controller 46791.
const MEMCACHED = { service: '97fa3eaf-8e67-4001-af44-0f4f8921ff48', small: '21fe54ca-7324-41da-a2a5-1050ef67e0dc' };
const PUBLIC_URL = 'http://127.0.0.1:46792';
const ISSUER = 'http://127.0.0.1:46790';
const CLIENT_SECRET = randomBytes(24).toString('hex');
let env: TestBroker;
let browser: Browser;
let uaa: StandIn;
let cloudController: Awaited<ReturnType<typeof startCloudControllerStandIn>>;
let clients: DashboardClient[];
let cfInstance: { id: string; url: string };
let kubeInstance: { id: string; url: string };

test.before(async () => {
  env = await startTestBroker(57, {
    portRange: { first: 46740, last: 46779 },
    listenPort: 46792,
    publicUrl: PUBLIC_URL,
    sso: { clientId: 'osb-dash', clientSecret: CLIENT_SECRET, issuer: ISSUER, cloudControllerUrl: 'http://127.0.0.1:46791' },
  });
  // What Cloud Controller does when the broker is registered: the catalog's dashboard clients become UAA clients.
  clients = (await env.client.request('GET', '/v2/catalog')).body.services.map((service: { dashboard_client: DashboardClient }) => service.dashboard_client);
  uaa = await startUaaStandIn(46790, clients);
  const [cf, kube] = await Promise.all(
    ['cloudfoundry', 'kubernetes'].map(async (platform) => {
      const id = uniqueId('sso');
      const reply = await env.client.provision(
        id,
        provisionBody(MEMCACHED.service, MEMCACHED.small, { context: { platform, instance_name: `${platform}-cache` } }),
      );
      const done = await env.client.waitForInstance(id, reply.body.operation);
      if (done.body.state !== 'succeeded') throw new Error(JSON.stringify(done.body));
      return { id, url: reply.body.dashboard_url as string };
    }),
  );
  cfInstance = cf!;
  kubeInstance = kube!;
  cloudController = await startCloudControllerStandIn(46791, ISSUER, {
    alice: { [cfInstance.id]: { read: true, manage: true } },
    mallory: { [cfInstance.id]: { read: true, manage: true } },
    carol: { [cfInstance.id]: { read: true, manage: false } },
    // bob is a developer of another space: Cloud Controller knows him, but not with this instance.
  });
  browser = await launchChromium(['--no-first-run']);
});
test.after.always(async () => {
  await browser?.close();
  await cloudController?.close();
  await uaa?.close();
  await env?.stop();
});

/** A fresh browser profile; the provider's page asks a font service on the internet, which is not reachable here. */
async function newContext(): Promise<BrowserContext> {
  const context = await browser.newContext();
  await context.route(/^https:\/\//, (route) => route.abort());
  return context;
}

/** Opens the instance's dashboard_url and signs in as `user` at the provider (login form, then consent). */
async function signIn(page: Page, user: string) {
  await page.goto(cfInstance.url);
  if (!page.url().startsWith(`${ISSUER}/`)) throw new Error(`not sent to the provider but to ${page.url()}`);
  await page.locator('input[name="login"]').fill(user);
  await page.locator('input[name="password"]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.waitForURL((url) => url.href.startsWith(PUBLIC_URL));
  await page.waitForLoadState();
}

test.serial("the catalog carries each offering's dashboard client; its secret appears nowhere else", async (t) => {
  t.true(clients.length > 1);
  t.is(new Set(clients.map((client) => client.id)).size, clients.length, 'one client id per offering, as Cloud Controller requires');
  for (const client of clients) {
    t.regex(client.id, /^osb-dash-[a-z-]+$/);
    t.is(client.secret, CLIENT_SECRET);
    t.is(client.redirect_uri, `${PUBLIC_URL}/dashboard/sso/callback`);
  }
  t.is(new URL(cfInstance.url).search, '', "a Cloud Foundry instance's dashboard_url carries no token: visitors sign in");
  t.regex(new URL(kubeInstance.url).searchParams.get('token') ?? '', /^[A-Za-z0-9_-]{43}$/, 'other platforms keep a lifelong link');
  const overview = await (await fetch(`${PUBLIC_URL}/dashboard`, { headers: { authorization: env.client.basic } })).text();
  t.false(overview.includes(CLIENT_SECRET));
  t.false(env.logs.join('\n').includes(CLIENT_SECRET), 'never logged');
  const cli = await promisify(execFile)(process.execPath, [path.join(PACKAGE_ROOT, 'dist/src/cli/osb-docker.js'), 'catalog', '--json'], {
    env: { ...process.env, OSB_BROKER_URL: PUBLIC_URL, OSB_BROKER_USERNAME: env.config.username, OSB_BROKER_PASSWORD: env.config.password },
  });
  t.regex(cli.stdout, /"dashboard_client"/);
  t.false(cli.stdout.includes(CLIENT_SECRET), "osb-docker catalog --json prints the client's id, not its secret");
});

test.serial('a user who may manage the instance signs in through UAA and lands on its dashboard', async (t) => {
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, 'alice');
  t.is(page.url(), `${PUBLIC_URL}/dashboard/instances/${cfInstance.id}`);
  await t.notThrowsAsync(page.getByText('cloudfoundry-cache').first().waitFor({ timeout: 10_000 }), "the instance's page");
  const details = await page.evaluate(async (url) => (await fetch(url)).status, `/dashboard/instances/${cfInstance.id}/api/details`);
  t.is(details, 200, "the page's own calls run on the session");
  t.deepEqual(cloudController.asked.at(-1), { user: 'alice', instance: cfInstance.id }, "Cloud Controller was asked with alice's token");
  const cookies = await context.cookies();
  const session = cookies.find((cookie) => cookie.name === 'osb_dashboard');
  t.truthy(session);
  t.true(session!.httpOnly);
  t.false(
    cookies.some((cookie) => cookie.name.startsWith('osb_sso_')),
    "the sign-in's state cookie is gone once used",
  );
  const other = await page.goto(`${PUBLIC_URL}/dashboard/instances/${kubeInstance.id}/api/details`);
  t.is(other?.status(), 401, 'the session opens this one instance only');
  await context.close();
});

test.serial('a user of another space gets a clear permission denied page, and a read-only user too', async (t) => {
  for (const [user, text] of [
    ['bob', /no access to this service instance/],
    ['carol', /not manage it/],
  ] as const) {
    const context = await newContext();
    const page = await context.newPage();
    await signIn(page, user);
    t.is(await page.locator('h1').textContent(), 'Permission denied', user);
    t.regex((await page.locator('main p').textContent()) ?? '', text);
    t.false(
      (await context.cookies()).some((cookie) => cookie.name === 'osb_dashboard'),
      `${user} gets no session`,
    );
    t.is((await page.goto(`${PUBLIC_URL}/dashboard/instances/${cfInstance.id}/api/details`))?.status(), 401);
    await context.close();
  }
});

test.serial('a sign-in answer this browser did not start, or with another state, is refused (CSRF)', async (t) => {
  // mallory signs in, but her browser's way back is caught: the provider's redirects after her consent are followed
  // by hand (with her browser's cookies) up to the callback URL with her code and state, which is not visited.
  const attacker = await newContext();
  let callback = '';
  await attacker.route(`${ISSUER}/interaction/**`, async (route) => {
    if (route.request().method() !== 'POST' || !route.request().postData()?.includes('prompt=consent')) return route.continue();
    const consented = await route.fetch({ maxRedirects: 0 });
    const resumed = await attacker.request.get(new URL(consented.headers().location!, ISSUER).href, { maxRedirects: 0 });
    callback = resumed.headers().location ?? '';
    await route.fulfill({ status: 200, contentType: 'text/plain', body: 'caught' });
  });
  const page = await attacker.newPage();
  await page.goto(cfInstance.url);
  await page.locator('input[name="login"]').fill('mallory');
  await page.locator('input[name="password"]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByText('caught').waitFor();
  t.true(callback.startsWith(`${PUBLIC_URL}/dashboard/sso/callback?`), callback);

  // The victim's browser is lured to it: it started no such sign-in.
  const victim = await newContext();
  const victimPage = await victim.newPage();
  const lured = await victimPage.goto(callback);
  t.is(lured?.status(), 400);
  t.is(await victimPage.locator('h1').textContent(), 'Sign-in refused');
  t.regex((await victimPage.locator('main p').textContent()) ?? '', /state does not match/);
  t.false((await victim.cookies()).some((cookie) => cookie.name === 'osb_dashboard'));

  // In mallory's own browser, the same answer with its state changed is refused too...
  const tampered = new URL(callback);
  tampered.searchParams.set('state', randomBytes(32).toString('base64url'));
  t.is((await page.goto(tampered.href))?.status(), 400);
  // ...while the untouched one, where it started, opens the dashboard: only the state made the difference.
  const genuine = await page.goto(callback);
  t.is(genuine?.status(), 200);
  t.is(page.url(), `${PUBLIC_URL}/dashboard/instances/${cfInstance.id}`);
  await attacker.close();
  await victim.close();
});

test.serial('a Kubernetes instance is never sent to UAA: its lifelong link opens it, and without one the advice speaks Kubernetes', async (t) => {
  const bare = await fetch(`${PUBLIC_URL}/dashboard/instances/${kubeInstance.id}`, { redirect: 'manual' });
  t.is(bare.status, 401);
  t.regex(await bare.text(), /Kubernetes/);
  t.is((await fetch(kubeInstance.url, { redirect: 'manual' })).status, 303);
  // An operator's rotated link opens a Cloud Foundry instance too, without signing in.
  const rotated = await fetch(`${PUBLIC_URL}/broker/v1/instances/${cfInstance.id}/dashboard-link`, {
    method: 'POST',
    headers: { authorization: env.client.basic },
  });
  const link = ((await rotated.json()) as { dashboard_url: string }).dashboard_url;
  t.is((await fetch(link, { redirect: 'manual' })).status, 303);
});

test.serial('the replica that sent the browser to UAA is killed (kill -9): another one finishes the sign-in', async (t) => {
  // A second broker process on the same Redis and key, behind the same public URL (as replicas behind a load balancer).
  const state = tempStateDir();
  const replica = await spawnBroker({
    PORT: '46793',
    BROKER_PUBLIC_URL: PUBLIC_URL,
    REDIS_URL: env.redisUrl,
    BROKER_ID: env.config.brokerId,
    BROKER_PASSWORD: env.config.password,
    BROKER_ENCRYPTION_KEY: env.config.encryptionKey.toString('hex'),
    BROKER_STATE_DIR: state.dir,
    BROKER_PORT_RANGE: '46740-46779',
    BROKER_RECONCILE_SECONDS: '0',
    BROKER_SSO_CLIENT_ID: 'osb-dash',
    BROKER_SSO_CLIENT_SECRET: CLIENT_SECRET,
    BROKER_SSO_UAA_URL: ISSUER,
    BROKER_CLOUD_CONTROLLER_URL: 'http://127.0.0.1:46791',
  });
  try {
    const context = await newContext();
    const page = await context.newPage();
    await page.goto(`${replica.url}/dashboard/instances/${cfInstance.id}`);
    t.true(page.url().startsWith(`${ISSUER}/`), 'the replica sent the browser to the provider');
    t.true((await context.cookies()).some((cookie) => cookie.name.startsWith('osb_sso_')));
    t.deepEqual(await replica.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });
    await page.locator('input[name="login"]').fill('alice');
    await page.locator('input[name="password"]').fill('any password');
    await page.getByRole('button', { name: 'Sign-in' }).click();
    await page.getByRole('button', { name: 'Continue' }).click();
    await page.waitForURL(`${PUBLIC_URL}/dashboard/instances/${cfInstance.id}`);
    await t.notThrowsAsync(page.getByText('cloudfoundry-cache').first().waitFor({ timeout: 10_000 }), 'the other process took the way back');
    await context.close();
  } finally {
    await replica.kill('SIGKILL');
    state.remove();
  }
});

test.serial('Cloud Controller unreachable: the sign-in ends on a clear page and opens nothing', async (t) => {
  await cloudController.close();
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, 'alice');
  t.is(await page.locator('h1').textContent(), 'Cloud Controller did not answer');
  t.false((await context.cookies()).some((cookie) => cookie.name === 'osb_dashboard'));
  await context.close();
});
