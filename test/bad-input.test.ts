import test from 'ava';
import http from 'node:http';
import { brokerObjects, PG, keysFromRequests, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

// Bad input gets a clear 4xx with {error, description} and leaves nothing behind.
let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(3, { bodyLimitBytes: 64 * 1024 });
});
test.after.always(async () => {
  await env?.stop();
});

/** Sends the path exactly as written (fetch would normalise "..", "%2e%2e" and friends away). */
function verbatim(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const url = new URL(env.client.url);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        host: url.hostname,
        port: url.port,
        method,
        path,
        headers: {
          Authorization: env.client.basic,
          'X-Broker-API-Version': '2.17',
          ...(payload ? { 'Content-Type': 'application/json' } : {}),
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString() || '{}') }));
      },
    );
    request.on('error', reject);
    request.end(payload);
  });
}

async function assertNothingCreated(t: import('ava').ExecutionContext) {
  t.deepEqual(await brokerObjects(env.config.brokerId), { containers: [], volumes: [] });
  const keys = await keysFromRequests(env.redisUrl, env.config.brokerId);
  t.deepEqual(keys, [], 'no record, operation, port or lock left in Redis');
}

test.serial('ids that are over-long, hold control characters or are dot segments are refused with 400 on every route', async (t) => {
  const body = provisionBody(PG.service, PG.small);
  const badIds = ['.', '..', 'x'.repeat(256), '€'.repeat(256), '\u0000', 'a\nb', 'tab\there', 'del\u007f', 'c1\u0085'];
  for (const id of badIds) {
    const encoded = encodeURIComponent(id).replace(/\./g, '%2E');
    const provision = await verbatim('PUT', `/v2/service_instances/${encoded}?accepts_incomplete=true`, body);
    t.is(provision.status, 400, `provision ${JSON.stringify(id)}: ${JSON.stringify(provision.body)}`);
    t.is(provision.body.error, 'BadRequest');
    t.truthy(provision.body.description);
    const bind = await verbatim('PUT', `/v2/service_instances/i-ok/service_bindings/${encoded}`, { service_id: PG.service, plan_id: PG.small });
    t.is(bind.status, 400, `bind ${JSON.stringify(id)}`);
    t.is((await verbatim('GET', `/v2/service_instances/${encoded}/last_operation`)).status, 400, `last_operation ${JSON.stringify(id)}`);
    t.is((await verbatim('GET', `/v2/service_instances/${encoded}`)).status, 400, `fetch ${JSON.stringify(id)}`);
    t.is((await verbatim('DELETE', `/v2/service_instances/${encoded}?service_id=${PG.service}&plan_id=${PG.small}&accepts_incomplete=true`)).status, 400);
  }
  // Ids as long as allowed are ids.
  for (const id of ['x'.repeat(255), '€'.repeat(255)]) {
    t.is((await verbatim('GET', `/v2/service_instances/${encodeURIComponent(id)}/last_operation`)).status, 404, `${id.length} characters`);
  }
  await assertNothingCreated(t);
});

test.serial('any other characters make an id: unknown ones answer 404 and 410, never 400', async (t) => {
  const oddIds = [
    '.hidden',
    'a..b',
    'has space',
    'semi;colon',
    'ünï',
    'a/b',
    '%',
    '%2F',
    '-leading-dash',
    '~tilde',
    'a:b',
    'a*',
    '日本',
    '😀',
    'quote\'"',
    '<script>',
  ];
  const body = provisionBody(PG.service, PG.small);
  const query = `service_id=${PG.service}&plan_id=${PG.small}`;
  for (const id of oddIds) {
    const encoded = encodeURIComponent(id);
    const what = JSON.stringify(id);
    t.is((await verbatim('GET', `/v2/service_instances/${encoded}`)).status, 404, `fetch ${what}`);
    t.is((await verbatim('GET', `/v2/service_instances/${encoded}/last_operation`)).status, 404, `last_operation ${what}`);
    t.is((await verbatim('DELETE', `/v2/service_instances/${encoded}?${query}&accepts_incomplete=true`)).status, 410, `deprovision ${what}`);
    t.is((await verbatim('GET', `/v2/service_instances/i-ok/service_bindings/${encoded}`)).status, 404, `fetch binding ${what}`);
    t.is((await verbatim('DELETE', `/v2/service_instances/${encoded}/service_bindings/${encoded}?${query}`)).status, 410, `unbind ${what}`);
    t.is((await verbatim('GET', `/v2/service_instances/${encoded}/service_bindings/${encoded}/last_operation`)).status, 404, `binding last_operation ${what}`);
  }
  // Path traversal in the raw path never reaches another route with a 2xx.
  for (const raw of ['/v2/service_instances/../catalog', '/v2/service_instances/%2e%2e/last_operation', '/v2/service_instances/a/../../catalog']) {
    const reply = await verbatim('PUT', `${raw}?accepts_incomplete=true`, body);
    t.true(reply.status >= 400 && reply.status < 500, `${raw} answered ${reply.status}`);
  }
  await assertNothingCreated(t);
});

test.serial('malformed, oversized and wrongly shaped bodies are refused', async (t) => {
  const { client } = env;
  const id = uniqueId();
  const path = `/v2/service_instances/${id}?accepts_incomplete=true`;
  const cases: Array<[string, string, number, string]> = [
    ['truncated JSON', '{"service_id": "', 400, 'MalformedJSON'],
    ['not JSON at all', 'service_id=x', 400, 'MalformedJSON'],
    ['a JSON array', '[]', 400, 'BadRequest'],
    ['a JSON string', '"hello"', 400, 'BadRequest'],
    ['null', 'null', 400, 'BadRequest'],
    ['empty body', '', 400, 'BadRequest'],
    ['a body over the limit', JSON.stringify({ ...provisionBody(PG.service, PG.small), pad: 'x'.repeat(70 * 1024) }), 413, 'PayloadTooLarge'],
    ['context not an object', JSON.stringify({ ...provisionBody(PG.service, PG.small), context: 'cf' }), 400, 'BadRequest'],
    ['ids of the wrong type', JSON.stringify({ ...provisionBody(PG.service, PG.small), service_id: 42 }), 400, 'BadRequest'],
  ];
  for (const [what, raw, status, error] of cases) {
    const reply = await client.request('PUT', path, undefined, { rawBody: raw });
    t.is(reply.status, status, what);
    t.is(reply.body.error, error, what);
    t.true(typeof reply.body.description === 'string' && reply.body.description.length > 0, what);
  }
  const patch = await client.request('PATCH', path, undefined, { rawBody: '{"service_id": [' });
  t.is(patch.status, 400);
  await assertNothingCreated(t);
});

test.serial('schema failures name the parameter; unknown ids and plans of other offerings are 400', async (t) => {
  const { client } = env;
  const id = uniqueId();
  const reply = await client.provision(
    id,
    provisionBody(PG.service, PG.small, { parameters: { database: 'UPPER', log_min_duration_statement: -5, extra: 1 } }),
  );
  t.is(reply.status, 400);
  t.regex(reply.body.description, /database/);
  t.regex(reply.body.description, /log_min_duration_statement/);
  t.regex(reply.body.description, /unknown parameter "extra"/);
  const otherPlan = await client.provision(id, provisionBody(PG.service, '00000000-0000-4000-8000-000000000000'));
  t.is(otherPlan.status, 400);
  t.regex(otherPlan.body.description, /not a plan of postgresql/);
  await assertNothingCreated(t);
});

test.serial('errors never echo secrets or credentials', async (t) => {
  const { client } = env;
  const wrong = await client.request('GET', '/v2/catalog', undefined, { auth: `Basic ${Buffer.from('broker:guess-me-123').toString('base64')}` });
  t.is(wrong.status, 401);
  t.false(JSON.stringify(wrong.body).includes('guess-me-123'));
  t.false(JSON.stringify(wrong.body).includes(env.config.password));
});
