import test from 'ava';
import { execFileSync } from 'node:child_process';
import { DependencyChecks } from '../src/health.js';
import { BrokerMetrics } from '../src/metrics.js';
import { startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

const REDIS_OFFERING = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };

let env: TestBroker;
let paused = false;
test.before(async () => {
  env = await startTestBroker(24, { metricsListen: { host: '127.0.0.1', port: 0 } });
});
test.after.always(async () => {
  if (paused) execFileSync('docker', ['unpause', env.redisContainer], { stdio: 'ignore' });
  await env?.stop();
});

/** A request that gives up after 10 s rather than hang the test. */
const get = (url: string, auth?: string) => fetch(url, { headers: auth ? { Authorization: auth } : {}, signal: AbortSignal.timeout(10_000) });

async function metricsText(): Promise<string> {
  const response = await get(`${env.broker.url}/metrics`, env.client.basic);
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  return response.text();
}

/** The value of one sample, by its exact name and label set as exposed; undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test.serial('/healthz answers without credentials; /readyz reports both dependencies ok', async (t) => {
  const health = await get(`${env.broker.url}/healthz`);
  t.is(health.status, 200);
  t.deepEqual(await health.json(), { status: 'ok' });

  const ready = await get(`${env.broker.url}/readyz`);
  t.is(ready.status, 200);
  t.deepEqual(await ready.json(), { status: 'ready', checks: { redis: 'ok', docker: 'ok' } });
});

test.serial('/metrics needs the broker credentials on the main port and serves the Prometheus text format', async (t) => {
  const anonymous = await get(`${env.broker.url}/metrics`);
  t.is(anonymous.status, 401);
  t.regex(anonymous.headers.get('www-authenticate') ?? '', /^Basic /);
  const wrong = await get(`${env.broker.url}/metrics`, `Basic ${Buffer.from('broker:wrong').toString('base64')}`);
  t.is(wrong.status, 401);

  const response = await get(`${env.broker.url}/metrics`, env.client.basic);
  t.is(response.status, 200);
  t.regex(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await response.text();
  t.regex(text, /^# HELP osb_http_requests_total /m);
  t.regex(text, /^# TYPE osb_http_request_duration_seconds histogram$/m);
  t.regex(text, /^# TYPE osb_operation_duration_seconds histogram$/m);
  t.regex(text, /^# TYPE osb_instances gauge$/m);
  t.is(sample(text, 'osb_redis_up'), 1);
  t.is(sample(text, 'osb_docker_up'), 1);
  t.not(sample(text, 'osb_operations_started_total{type="provision"}'), undefined);
  t.not(sample(text, 'osb_operations_finished_total{type="bind",outcome="failed"}'), undefined);
  t.not(sample(text, 'osb_operation_lease_takeovers_total{type="deprovision"}'), undefined);
  t.regex(text, /^process_cpu_user_seconds_total /m);
  // The refused requests above were counted, under their route.
  t.true(sample(text, 'osb_http_requests_total{method="GET",route="/metrics",status="401"}')! >= 2);
});

test.serial('the separate metrics listener serves /metrics without credentials and nothing else', async (t) => {
  t.truthy(env.broker.metricsUrl);
  const response = await get(`${env.broker.metricsUrl}/metrics`);
  t.is(response.status, 200);
  const text = await response.text();
  t.is(sample(text, 'osb_redis_up'), 1);
  t.regex(text, /^# TYPE osb_http_requests_total counter$/m);
  t.is((await get(`${env.broker.metricsUrl}/readyz`)).status, 404);
  t.is((await get(`${env.broker.metricsUrl}/v2/catalog`, env.client.basic)).status, 404);
});

test.serial('after a provision and a bind, requests are counted by route template and the instance by offering, plan and state', async (t) => {
  const { client } = env;
  const id = uniqueId('metrics');
  const bindingId = uniqueId('binding');
  const accepted = await client.provision(id, provisionBody(REDIS_OFFERING.service, REDIS_OFFERING.small));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await client.waitForInstance(id, accepted.body.operation);
  t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
  const bound = await client.bind(id, bindingId, { service_id: REDIS_OFFERING.service, plan_id: REDIS_OFFERING.small });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  // Refused before any route matched: counted under the mount, still without the id.
  t.is((await client.request('GET', `/v2/service_instances/${id}`, undefined, { auth: null })).status, 401);

  const text = await metricsText();
  // Only the per-instance gauges (disk, engine stats, last backup) name an instance, by its id in `instance_id`; the
  // request counters carry route templates, never the raw path.
  const linesWithId = text.split('\n').filter((line) => line.includes(id));
  t.true(
    linesWithId.every((line) => /^osb_(instance_(disk|engine)_[a-z_]+|backup_last_success_timestamp_seconds)\{[^}]*instance_id="/.test(line)),
    `instance id only in per-instance gauges: ${linesWithId.join(' | ')}`,
  );
  t.false(text.includes(`/v2/service_instances/${id}`), 'no raw path in the metrics');
  t.false(text.includes(bindingId), 'no binding id in the metrics');
  t.false(text.includes(client.password), 'no password in the metrics');
  t.is(sample(text, 'osb_http_requests_total{method="PUT",route="/v2/service_instances/:instance_id",status="202"}'), 1);
  t.is(sample(text, 'osb_http_requests_total{method="PUT",route="/v2/service_instances/:instance_id/service_bindings/:binding_id",status="201"}'), 1);
  t.true(sample(text, 'osb_http_requests_total{method="GET",route="/v2/service_instances/:instance_id/last_operation",status="200"}')! >= 1);
  t.is(sample(text, 'osb_http_requests_total{method="GET",route="/v2/*",status="401"}'), 1);
  t.is(sample(text, 'osb_http_request_duration_seconds_count{method="PUT",route="/v2/service_instances/:instance_id"}'), 1);
  t.is(sample(text, 'osb_instances{offering="redis",plan="small",state="ready"}'), 1);

  // Deprovisioned, the instance leaves the gauge.
  t.is((await client.unbind(id, bindingId, REDIS_OFFERING.service, REDIS_OFFERING.small)).status, 200);
  const deleting = await client.deprovision(id, REDIS_OFFERING.service, REDIS_OFFERING.small);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  t.is((await client.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');
  t.is(sample(await metricsText(), 'osb_instances{offering="redis",plan="small",state="ready"}'), undefined);
});

test.serial('a paused Redis makes /readyz answer 503 naming redis and osb_redis_up 0; unpaused, ready again', async (t) => {
  execFileSync('docker', ['pause', env.redisContainer]);
  paused = true;

  const health = await get(`${env.broker.url}/healthz`);
  t.is(health.status, 200, 'alive regardless of Redis');
  const notReady = await get(`${env.broker.url}/readyz`);
  t.is(notReady.status, 503);
  const body = (await notReady.json()) as { status: string; checks: Record<string, string>; description: string };
  t.is(body.status, 'not ready');
  t.is(body.checks.docker, 'ok');
  t.regex(body.checks.redis!, /no answer within 1000 ms/);
  t.regex(body.description, /^redis does not answer/);

  const text = await metricsText();
  t.is(sample(text, 'osb_redis_up'), 0);
  t.is(sample(text, 'osb_docker_up'), 1);

  execFileSync('docker', ['unpause', env.redisContainer]);
  paused = false;
  let ready: Response | undefined;
  for (let attempt = 0; attempt < 50; attempt++) {
    ready = await get(`${env.broker.url}/readyz`);
    if (ready.status === 200) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  t.is(ready?.status, 200);
  t.is(sample(await metricsText(), 'osb_redis_up'), 1);
});

test('checks bound each probe by the time-out and strip credentials from reasons', async (t) => {
  const checks = new DependencyChecks(
    {
      redis: () => new Promise(() => {}),
      docker: () => Promise.reject(new Error('connect ECONNREFUSED tcp://admin:s3cret@engine:2376')),
    },
    200,
  );
  const readiness = await checks.run();
  t.false(readiness.ready);
  t.is(readiness.checks.redis, 'no answer within 200 ms');
  t.is(readiness.checks.docker, 'connect ECONNREFUSED tcp://engine:2376');
});

test('operation reports and health records appear as metrics', async (t) => {
  const checks = new DependencyChecks({ redis: async () => {}, docker: async () => {} });
  const instance = (id: string, planId: string, state: 'ready' | 'failed') => ({
    id,
    serviceId: REDIS_OFFERING.service,
    planId,
    state,
  });
  const metrics = new BrokerMetrics({
    checks,
    // Only the fields the metrics read.
    listInstances: async () =>
      [instance('a', REDIS_OFFERING.small, 'ready'), instance('b', REDIS_OFFERING.small, 'ready'), instance('c', 'retired-plan', 'failed')] as never,
    definitions: [
      { offering: { id: REDIS_OFFERING.service, name: 'redis', plans: [{ id: REDIS_OFFERING.small, name: 'small' }] }, limits: new Map() },
    ] as never,
  });
  metrics.operationStarted('provision');
  metrics.operationFinished('provision', 'succeeded', 3.2);
  metrics.operationStarted('bind');
  metrics.operationFinished('bind', 'failed', 0.4);
  metrics.leaseTakenOver('update');
  let text = await metrics.text();
  t.is(sample(text, 'osb_operations_started_total{type="provision"}'), 1);
  t.is(sample(text, 'osb_operations_finished_total{type="provision",outcome="succeeded"}'), 1);
  t.is(sample(text, 'osb_operations_finished_total{type="bind",outcome="failed"}'), 1);
  t.is(sample(text, 'osb_operations_finished_total{type="bind",outcome="succeeded"}'), 0);
  t.is(sample(text, 'osb_operation_duration_seconds_bucket{le="5",type="provision",outcome="succeeded"}'), 1);
  t.is(sample(text, 'osb_operation_duration_seconds_bucket{le="2",type="provision",outcome="succeeded"}'), 0);
  t.is(sample(text, 'osb_operation_lease_takeovers_total{type="update"}'), 1);
  t.is(sample(text, 'osb_instances{offering="redis",plan="small",state="ready"}'), 2);
  t.is(sample(text, 'osb_instances{offering="redis",plan="retired-plan",state="failed"}'), 1);
  t.false(text.includes('osb_instance_health{'), 'no health series without a source');

  metrics.instancesByHealth = () =>
    new Map([
      ['a', 'ok'],
      ['b', 'repaired'],
      ['c', 'down'],
      ['gone', 'down'],
    ]);
  text = await metrics.text();
  t.is(sample(text, 'osb_instance_health{offering="redis",plan="small",health="ok"}'), 1);
  t.is(sample(text, 'osb_instance_health{offering="redis",plan="small",health="repaired"}'), 1);
  t.is(sample(text, 'osb_instance_health{offering="redis",plan="retired-plan",health="down"}'), 1);
});
