import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createLogger } from '../src/log.js';
import { startBroker, type RunningBroker } from '../src/server.js';
import { RedisStore } from '../src/store/redis-store.js';
import { Sealer } from '../src/store/sealer.js';
import { startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

// Lifelong dashboard links: what Cloud Foundry keeps from the provision answer must still open the dashboard long
// after the expiring links' lifetime (1 s here), until an operator rotates it or the instance is deleted.
const MEMCACHED = { service: '97fa3eaf-8e67-4001-af44-0f4f8921ff48', small: '21fe54ca-7324-41da-a2a5-1050ef67e0dc' };
let env: TestBroker;
let store: RedisStore;
let paused = false;
const live: Record<'rotated' | 'older', { id: string; url: string }> = { rotated: { id: '', url: '' }, older: { id: '', url: '' } };

test.before(async () => {
  env = await startTestBroker(57, { dashboardLinkSeconds: 1, portRange: { first: 46700, last: 46739 } });
  store = new RedisStore(env.redisUrl, env.config.brokerId, new Sealer(env.config.encryptionKey));
  await store.connect();
  await Promise.all(
    (['rotated', 'older'] as const).map(async (name) => {
      const id = uniqueId('link');
      const reply = await env.client.provision(
        id,
        provisionBody(MEMCACHED.service, MEMCACHED.small, { context: { platform: 'cloudfoundry', instance_name: name } }),
      );
      const done = await env.client.waitForInstance(id, reply.body.operation);
      if (done.body.state !== 'succeeded') throw new Error(JSON.stringify(done.body));
      live[name] = { id, url: reply.body.dashboard_url };
    }),
  );
});
test.after.always(async () => {
  if (paused) execFileSync('docker', ['unpause', env.redisContainer], { stdio: 'ignore' });
  await store?.close();
  await env?.stop();
});

const get = (url: string, cookie?: string) =>
  fetch(url.startsWith('http') ? url : `${env.client.url}${url}`, { redirect: 'manual', headers: cookie ? { cookie } : {} });
const tokenOf = (url: string) => new URL(url).searchParams.get('token') ?? '';
const pathOf = (url: string) => new URL(url).pathname;

/** The link's first visit: its session cookie, after checking it answers 303 to the clean page. */
async function open(url: string): Promise<string> {
  const response = await get(url);
  if (response.status !== 303) throw new Error(`${url} answered ${response.status}: ${await response.text()}`);
  return (response.headers.get('set-cookie') ?? '').split(';')[0]!;
}

const rotate = (id: string, authorization = env.client.basic) =>
  fetch(`${env.client.url}/broker/v1/instances/${id}/dashboard-link`, { method: 'POST', headers: { authorization } });

test.serial('the dashboard_url is lifelong: the same from provision, fetch and listing, and still valid after the expiring links lifetime', async (t) => {
  const { id, url } = live.rotated;
  t.regex(tokenOf(url), /^[A-Za-z0-9_-]{43}$/, 'a random secret, not a signed expiring token');
  t.is((await env.client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url, url, 'the platform is not handed a new one each time');
  const listed = (await env.client.request('GET', '/broker/v1/instances')).body.instances.find((row: { id: string }) => row.id === id);
  t.is(listed.dashboard_url, url);
  const overview = await (await fetch(`${env.client.url}/dashboard`, { headers: { authorization: env.client.basic } })).text();
  const expiring = new RegExp(`href="(/dashboard/instances/${id}\\?token=[^"]+)"`).exec(overview)![1]!.replaceAll('&amp;', '&');
  t.true(tokenOf(`http://x${expiring}`).includes('.'), "the overview's links are the expiring kind");
  // Wait for the expiring link to die (its lifetime is 1 s): from then on, any link of that kind would be refused.
  let refused: Response;
  for (let attempt = 0; (refused = await get(expiring)).status !== 401; attempt++) {
    if (attempt > 50) throw new Error('the expiring link never expired');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.regex(await refused.text(), /has expired/);
  const cookie = await open(url);
  t.regex(cookie, /^osb_dashboard=/);
  const page = await get(pathOf(url), cookie);
  t.is(page.status, 200);
  t.is((await get(`${pathOf(url)}/api/details`, cookie)).status, 200);
  t.false(env.logs.join('\n').includes(tokenOf(url)), 'the link secret is never logged (access lines carry the path only)');
});

test.serial('a rotation answers a new link; the old link and the sessions it opened stop working at once', async (t) => {
  const { id, url } = live.rotated;
  const oldSession = await open(url);
  t.is((await rotate(id, `Basic ${Buffer.from('broker:wrong').toString('base64')}`)).status, 401, 'rotation needs the broker credentials');
  t.is((await rotate(uniqueId('none'))).status, 404);
  const reply = await rotate(id);
  t.is(reply.status, 200);
  const fresh = ((await reply.json()) as { dashboard_url: string }).dashboard_url;
  t.not(fresh, url);
  t.is(pathOf(fresh), pathOf(url));

  const old = await get(url);
  t.is(old.status, 401);
  const advice = await old.text();
  t.regex(advice, /not valid/);
  t.regex(advice, /cf service &lt;instance name&gt;|cf service <instance name>/, 'the advice speaks Cloud Foundry for a Cloud Foundry instance');
  t.regex(advice, new RegExp(`/broker/v1/instances/${id}/dashboard-link`));
  const stale = await get(`${pathOf(url)}/api/details`, oldSession);
  t.is(stale.status, 401, 'a session opened with the old link ends with it');
  t.regex(((await stale.json()) as { description: string }).description, /replaced/);

  const cookie = await open(fresh);
  t.is((await get(`${pathOf(fresh)}/api/details`, cookie)).status, 200);
  t.is((await env.client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url, fresh, 'fetching the instance tells the new link');
  const update = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, { service_id: MEMCACHED.service, parameters: {} });
  t.is(update.status, 200);
  t.is(update.body.dashboard_url, fresh, 'so does an update, which Cloud Foundry keeps');
});

test.serial('an instance from before lifelong links keeps its expiring link, and gets a lifelong one at its next update', async (t) => {
  const { id } = live.older;
  const record = (await store.getInstance(id))!;
  const { dashboardLink: _lifelong, ...secrets } = record.secrets;
  await store.putInstance({ ...record, secrets });
  const before = (await env.client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url as string;
  t.true(tokenOf(before).includes('.'), 'an expiring signed token, as an older broker made');
  await open(before);
  const update = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, { service_id: MEMCACHED.service, parameters: {} });
  t.is(update.status, 200);
  const lifelong = update.body.dashboard_url as string;
  t.regex(tokenOf(lifelong), /^[A-Za-z0-9_-]{43}$/);
  t.is((await store.getInstance(id))!.secrets.dashboardLink, tokenOf(lifelong), 'kept, sealed, with the instance');
  t.is((await env.client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url, lifelong);
  await open(lifelong);
  const raw = execFileSync('docker', ['exec', env.redisContainer, 'redis-cli', 'GET', `osb:${env.config.brokerId}:instance:${id}`], { encoding: 'utf8' });
  t.regex(raw, /"sealed"/);
  t.false(raw.includes(tokenOf(lifelong)), 'the link secret is sealed in Redis, never in clear');
});

test.serial('Redis paused: the dashboard answers 503, and the same link works once Redis is back; another replica accepts it too', async (t) => {
  const link = (await env.client.request('GET', `/v2/service_instances/${live.older.id}`)).body.dashboard_url as string;
  execFileSync('docker', ['pause', env.redisContainer]);
  paused = true;
  const during = await get(link);
  t.is(during.status, 503, 'no answer from the store is not an access decision');
  execFileSync('docker', ['unpause', env.redisContainer]);
  paused = false;
  let after: Response;
  for (let attempt = 0; (after = await get(link)).status === 503; attempt++) {
    if (attempt > 100) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.is(after.status, 303);

  // A second process on the same Redis and key (a replica, or the broker after a restart) knows the link, and a rotation on one is seen by the other.
  let replica: RunningBroker | undefined;
  try {
    replica = await startBroker({ ...env.config, listenPort: 0, publicUrl: undefined }, createLogger('error', {}, { write: () => {} }));
    t.is((await fetch(`${replica.url}${pathOf(link)}?token=${tokenOf(link)}`, { redirect: 'manual' })).status, 303);
    const fresh = ((await (await rotate(live.older.id)).json()) as { dashboard_url: string }).dashboard_url;
    t.is((await fetch(`${replica.url}${pathOf(link)}?token=${tokenOf(link)}`, { redirect: 'manual' })).status, 401);
    t.is((await fetch(`${replica.url}${pathOf(fresh)}?token=${tokenOf(fresh)}`, { redirect: 'manual' })).status, 303);
  } finally {
    await replica?.close();
  }
});

test.serial('deprovision revokes the link and the sessions it opened', async (t) => {
  const { id } = live.rotated;
  const link = (await env.client.request('GET', `/v2/service_instances/${id}`)).body.dashboard_url as string;
  const cookie = await open(link);
  const gone = await env.client.deprovision(id, MEMCACHED.service, MEMCACHED.small);
  t.is((await env.client.waitForInstance(id, gone.body.operation)).body.state, 'succeeded');
  t.is((await get(link)).status, 401);
  t.is((await get(`${pathOf(link)}/api/details`, cookie)).status, 401);
  t.is((await rotate(id)).status, 404, 'a deleted instance gets no new link');
});
