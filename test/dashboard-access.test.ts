import test from 'ava';
import { execFileSync } from 'node:child_process';
import pg from 'pg';
import { DashboardTokens } from '../src/dashboard/tokens.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

// Who may open which dashboard: signed links, the cookie they turn into, the overview behind the broker's credentials.
let env: TestBroker;
let first: string;
let second: string;
let firstLink: string;

test.before(async () => {
  // The broker would start a stopped container again at once; the stopped-container view is what is tested here.
  env = await startTestBroker(16, { reconcileSeconds: 0 });
  first = uniqueId('dash');
  second = uniqueId('dash');
  const replies = await Promise.all(
    [first, second].map((id) => env.client.provision(id, provisionBody(PG.service, PG.small, { context: { instance_name: `name-of-${id}` } }))),
  );
  firstLink = replies[0]!.body.dashboard_url;
  for (const [index, id] of [first, second].entries()) {
    const done = await env.client.waitForInstance(id, replies[index]!.body.operation);
    if (done.body.state !== 'succeeded') throw new Error(JSON.stringify(done.body));
  }
});
test.after.always(async () => {
  await env?.stop();
});

const pathOf = (id: string) => `/dashboard/instances/${id}`;
const get = (path: string, headers: Record<string, string> = {}) => fetch(`${env.client.url}${path}`, { headers, redirect: 'manual' });
const cookieFrom = (response: Response) => (response.headers.get('set-cookie') ?? '').split(';')[0]!;

async function session(link: string): Promise<string> {
  const response = await fetch(link, { redirect: 'manual' });
  return cookieFrom(response);
}

test('the dashboard_url turns into an HttpOnly SameSite cookie scoped to the instance, then a clean URL', async (t) => {
  t.true(firstLink.startsWith(`${env.broker.publicUrl}${pathOf(first)}?token=`));
  const response = await fetch(firstLink, { redirect: 'manual' });
  t.is(response.status, 303);
  t.is(response.headers.get('location'), pathOf(first), 'the token is dropped from the URL');
  const cookie = response.headers.get('set-cookie') ?? '';
  t.regex(cookie, /^osb_dashboard=[^;]+;/);
  t.regex(cookie, /path=\/dashboard\/instances\/dash-[0-9a-f]+;/);
  t.regex(cookie, /httponly/i);
  t.regex(cookie, /samesite=lax/i);
  const page = await get(pathOf(first), { cookie: cookieFrom(response) });
  t.is(page.status, 200);
  t.regex(page.headers.get('content-type') ?? '', /text\/html/);
  t.regex(page.headers.get('content-security-policy') ?? '', /default-src 'none'/);
  const details = await get(`${pathOf(first)}/api/details`, { cookie: cookieFrom(response) });
  t.is(details.status, 200);
  const body = (await details.json()) as any;
  t.is(body.id, first);
  t.is(body.name, `name-of-${first}`);
  t.is(body.offering.name, 'postgresql');
  t.true(body.container.running);
});

test('missing, forged and expired tokens get a clear 401 page', async (t) => {
  const missing = await get(pathOf(first));
  t.is(missing.status, 401);
  t.regex(await missing.text(), /Open this dashboard through the link your platform shows/);
  t.is((await get(`${pathOf(first)}/api/logs`)).status, 401);
  t.is(((await (await get(`${pathOf(first)}/api/top`)).json()) as any).error, 'Accessdenied');

  // The signed, expiring kind of token (the overview's, and older instances' links); lifelong links are dashboard-links.test.ts's.
  const token = new DashboardTokens(env.config.encryptionKey).mint('link', first, 600);
  const [body, signature] = token.split('.');
  const forgedBody = Buffer.from(JSON.stringify({ p: 'link', i: first, e: 9_999_999_999 })).toString('base64url');
  for (const forged of [`${forgedBody}.${signature}`, `${body}.${signature!.slice(0, -2)}AA`, 'garbage', `${body}`]) {
    const response = await get(`${pathOf(first)}?token=${encodeURIComponent(forged)}`);
    t.is(response.status, 401, forged);
    t.regex(await response.text(), /not valid/);
    t.is(response.headers.get('set-cookie'), null);
  }
  const past = new DashboardTokens(env.config.encryptionKey, () => Date.now() - 3600_000);
  const expired = await get(`${pathOf(first)}?token=${past.mint('link', first, 60)}`);
  t.is(expired.status, 401);
  t.regex(await expired.text(), /has expired/);
  const oldSession = `osb_dashboard=${past.mint('session', first, 60)}`;
  t.is((await get(`${pathOf(first)}/api/details`, { cookie: oldSession })).status, 401, 'an expired session cookie is refused');
  const wrongKey = new DashboardTokens(Buffer.alloc(32, 7));
  t.is((await get(`${pathOf(first)}?token=${wrongKey.mint('link', first, 600)}`)).status, 401, 'a token signed with another key is refused');
});

test("one instance's token or cookie never opens another", async (t) => {
  const token = new DashboardTokens(env.config.encryptionKey).mint('link', first, 600);
  const crossLink = await get(`${pathOf(second)}?token=${token}`);
  t.is(crossLink.status, 401);
  t.regex(await crossLink.text(), /belongs to another service instance/);
  const lifelong = new URL(firstLink).searchParams.get('token')!;
  t.is((await get(`${pathOf(second)}?token=${lifelong}`)).status, 401, "the first instance's lifelong link does not open the second");
  const cookie = await session(firstLink);
  t.is((await get(pathOf(second), { cookie })).status, 401);
  t.is((await get(`${pathOf(second)}/api/details`, { cookie })).status, 401);
  // A session cookie is not a link token either.
  const sessionValue = cookie.slice('osb_dashboard='.length);
  t.is((await get(`${pathOf(first)}?token=${sessionValue}`)).status, 401);
});

test("the overview lists every instance behind the broker's credentials, with fresh links", async (t) => {
  t.is((await get('/dashboard')).status, 401);
  t.regex((await get('/dashboard')).headers.get('www-authenticate') ?? '', /Basic/);
  t.is((await get('/dashboard', { authorization: `Basic ${Buffer.from('broker:wrong').toString('base64')}` })).status, 401);
  const overview = await get('/dashboard', { authorization: env.client.basic });
  t.is(overview.status, 200);
  const html = await overview.text();
  for (const id of [first, second]) {
    t.true(html.includes(`name-of-${id}`));
    const link = new RegExp(`href="(/dashboard/instances/${id}\\?token=[^"]+)"`).exec(html)?.[1];
    t.truthy(link, `a link to ${id}`);
    t.is((await get(link!.replaceAll('&amp;', '&'))).status, 303, 'the link works');
  }
  t.true(html.includes('postgresql'));
  t.regex(html, /127\.0\.0\.1:\d+/);
});

test('no password ever reaches the dashboard: details, processes and logs are redacted on the server', async (t) => {
  const { client } = env;
  const updated = await client.request('PATCH', `/v2/service_instances/${first}?accepts_incomplete=true`, {
    service_id: PG.service,
    parameters: { log_min_duration_statement: 0 },
  });
  t.is(updated.status, 202);
  t.is((await client.waitForInstance(first, updated.body.operation)).body.state, 'succeeded');
  const bound = await client.bind(first, 'leaky', { service_id: PG.service, plan_id: PG.small });
  const { uri, password } = bound.body.credentials;
  // Every statement is logged now, so the password lands in the container's log.
  const db = new pg.Client({ connectionString: uri });
  await db.connect();
  await db.query(`SELECT 'my password is ${password}' AS leak`);
  await db.end();
  const name = execFileSync('docker', ['ps', '-a', '--filter', `label=io.osb-broker.instance=${first}`, '--format', '{{.Names}}'], { encoding: 'utf8' }).trim();
  const raw = execFileSync('docker', ['logs', '--tail', '200', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const rawErr = execFileSync('sh', ['-c', `docker logs --tail 200 ${name} 2>&1 >/dev/null`], { encoding: 'utf8' });
  t.true(`${raw}${rawErr}`.includes(password), 'the engine log holds the password');

  const cookie = await session((await client.request('GET', `/v2/service_instances/${first}`)).body.dashboard_url);
  let sawRedacted = false;
  for (const api of ['details', 'top', 'logs?tail=2000', 'logs/download']) {
    const response = await get(`${pathOf(first)}/api/${api}`, { cookie });
    t.is(response.status, 200, api);
    const text = await response.text();
    t.false(text.includes(password), `${api} shows no binding password`);
    t.false(/ADMIN_PASSWORD|BINDING_PASSWORD|"Env"/.test(text), `${api} shows no environment`);
    if (text.includes('my password is ••••••')) sawRedacted = true;
  }
  t.true(sawRedacted, 'the leaking log line is shown, redacted');
  const reply = await client.unbind(first, 'leaky', PG.service, PG.small);
  t.is(reply.status, 200);
});

test('a stopped container shows its state and an explanation instead of an error', async (t) => {
  const name = execFileSync('docker', ['ps', '-a', '--filter', `label=io.osb-broker.instance=${second}`, '--format', '{{.Names}}'], {
    encoding: 'utf8',
  }).trim();
  execFileSync('docker', ['stop', '-t', '5', name]);
  const cookie = await session((await env.client.request('GET', `/v2/service_instances/${second}`)).body.dashboard_url);
  const details = (await (await get(`${pathOf(second)}/api/details`, { cookie })).json()) as any;
  t.false(details.container.running);
  t.is(details.container.status, 'exited');
  t.regex(details.explanation, /The container exited with code \d+ .* at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/);
  const top = (await (await get(`${pathOf(second)}/api/top`, { cookie })).json()) as any;
  t.deepEqual(top.processes, []);
  t.regex(top.explanation, /not running/);
  const logs = (await (await get(`${pathOf(second)}/api/logs`, { cookie })).json()) as any;
  t.true(
    logs.lines.some((line: { text: string }) => /shutting down|shut down/.test(line.text)),
    'the logs say why it ended',
  );
  execFileSync('docker', ['start', name]);
});
