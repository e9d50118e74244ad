import test from 'ava';
import type { Server } from 'node:http';
import { createApp } from '../../src/http/app.js';
import { createLogger } from '../../src/log.js';
import { badRequest, concurrencyError, gone } from '../../src/osb/errors.js';
import type { ServiceBroker } from '../../src/osb/types.js';
import { OsbClient } from '../helpers/osb-client.js';

/** A broker whose answers each test sets: the status table is the HTTP adapter's alone. */
function fakeBroker(overrides: Partial<ServiceBroker> = {}): ServiceBroker & { calls: Array<{ method: string; args: unknown[] }> } {
  const calls: Array<{ method: string; args: unknown[] }> = [];
  const record =
    (method: string, value: unknown) =>
    async (...args: unknown[]) => {
      calls.push({ method, args });
      if (value instanceof Error) throw value;
      return value;
    };
  return {
    calls,
    catalog: () => [
      {
        id: 's',
        name: 'svc',
        description: 'd',
        bindable: true,
        instances_retrievable: true,
        bindings_retrievable: true,
        allow_context_updates: true,
        plans: [{ id: 'p', name: 'plan', description: 'd', plan_updateable: true, maintenance_info: { version: '1.0.0' }, maximum_polling_duration: 60 }],
      },
    ],
    provision: record('provision', { async: false, alreadyExists: false, dashboardUrl: 'http://x/d' }) as ServiceBroker['provision'],
    fetchInstance: record('fetchInstance', {
      service_id: 's',
      plan_id: 'p',
      parameters: {},
      maintenance_info: { version: '1.0.0' },
    }) as ServiceBroker['fetchInstance'],
    update: record('update', { async: false }) as ServiceBroker['update'],
    deprovision: record('deprovision', { async: false }) as ServiceBroker['deprovision'],
    lastInstanceOperation: record('lastInstanceOperation', { state: 'in progress', description: 'working' }) as ServiceBroker['lastInstanceOperation'],
    bind: record('bind', {
      async: false,
      alreadyExists: false,
      credentials: { uri: 'x://' },
      endpoints: [{ host: 'h', ports: ['1'] }],
    }) as ServiceBroker['bind'],
    fetchBinding: record('fetchBinding', { credentials: { uri: 'x://' } }) as ServiceBroker['fetchBinding'],
    unbind: record('unbind', { async: false }) as ServiceBroker['unbind'],
    lastBindingOperation: record('lastBindingOperation', { state: 'succeeded', description: 'done' }) as ServiceBroker['lastBindingOperation'],
    ...overrides,
  };
}

async function serve(broker: ServiceBroker, bodyLimitBytes = 4096): Promise<{ client: OsbClient; close: () => Promise<void> }> {
  const app = createApp(broker, { username: 'admin', password: 'secret', bodyLimitBytes, log: createLogger('silent') });
  const server = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const port = (server.address() as { port: number }).port;
  return { client: new OsbClient(`http://127.0.0.1:${port}`, 'admin', 'secret'), close: () => new Promise((resolve) => server.close(() => resolve())) };
}

const bodyFor = (method: string) => (method === 'PUT' || method === 'PATCH' ? {} : undefined);

const ROUTES: Array<[string, string]> = [
  ['GET', '/v2/catalog'],
  ['PUT', '/v2/service_instances/i'],
  ['GET', '/v2/service_instances/i'],
  ['PATCH', '/v2/service_instances/i'],
  ['DELETE', '/v2/service_instances/i?service_id=s&plan_id=p'],
  ['GET', '/v2/service_instances/i/last_operation'],
  ['PUT', '/v2/service_instances/i/service_bindings/b'],
  ['GET', '/v2/service_instances/i/service_bindings/b'],
  ['DELETE', '/v2/service_instances/i/service_bindings/b?service_id=s&plan_id=p'],
  ['GET', '/v2/service_instances/i/service_bindings/b/last_operation'],
];

test('every route answers 401 without or with wrong credentials, before reading the body or the version', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker);
  for (const [method, path] of ROUTES) {
    const missing = await client.request(method, path, bodyFor(method), { auth: null, version: null });
    t.is(missing.status, 401, `${method} ${path}`);
    t.is(missing.body.error, 'Unauthorized');
    t.regex(missing.headers.get('content-type') ?? '', /application\/json/);
    const wrong = await client.request(method, path, undefined, {
      auth: `Basic ${Buffer.from('admin:nope').toString('base64')}`,
      rawBody: method === 'PUT' ? '{not json' : undefined,
    });
    t.is(wrong.status, 401, `${method} ${path}`);
    const wrongUser = await client.request(method, path, undefined, { auth: `Basic ${Buffer.from('root:secret').toString('base64')}` });
    t.is(wrongUser.status, 401);
  }
  t.is(broker.calls.length, 0);
  await close();
});

test('every route answers 412 for a missing, empty or unsupported API version', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker);
  for (const [method, path] of ROUTES) {
    for (const version of [null, '', '1.0', '2.12', '3.0', 'latest']) {
      const reply = await client.request(method, path, bodyFor(method), { version });
      t.is(reply.status, 412, `${method} ${path} with version ${JSON.stringify(version)}`);
      t.is(reply.body.error, 'PreconditionFailed');
    }
  }
  t.is(broker.calls.length, 0);
  for (const version of ['2.13', '2.14', '2.15', '2.16', '2.17']) {
    t.is((await client.request('GET', '/v2/catalog', undefined, { version })).status, 200);
  }
  await close();
});

test('result flags decide the status code', async (t) => {
  const cases: Array<{ broker: Partial<ServiceBroker>; method: string; path: string; status: number; body: unknown }> = [
    { broker: {}, method: 'PUT', path: '/v2/service_instances/i', status: 201, body: { dashboard_url: 'http://x/d' } },
    {
      broker: { provision: async () => ({ async: false, alreadyExists: true, dashboardUrl: 'http://x/d' }) },
      method: 'PUT',
      path: '/v2/service_instances/i',
      status: 200,
      body: { dashboard_url: 'http://x/d' },
    },
    {
      broker: { provision: async () => ({ async: true, alreadyExists: false, operation: 'op1', dashboardUrl: 'http://x/d' }) },
      method: 'PUT',
      path: '/v2/service_instances/i?accepts_incomplete=true',
      status: 202,
      body: { dashboard_url: 'http://x/d', operation: 'op1' },
    },
    { broker: {}, method: 'PATCH', path: '/v2/service_instances/i', status: 200, body: {} },
    {
      broker: { update: async () => ({ async: true, operation: 'op2' }) },
      method: 'PATCH',
      path: '/v2/service_instances/i?accepts_incomplete=true',
      status: 202,
      body: { operation: 'op2' },
    },
    { broker: {}, method: 'DELETE', path: '/v2/service_instances/i?service_id=s&plan_id=p', status: 200, body: {} },
    {
      broker: { deprovision: async () => ({ async: true, operation: 'op3' }) },
      method: 'DELETE',
      path: '/v2/service_instances/i?service_id=s&plan_id=p&accepts_incomplete=true',
      status: 202,
      body: { operation: 'op3' },
    },
    {
      broker: {
        deprovision: async () => {
          throw gone('x');
        },
      },
      method: 'DELETE',
      path: '/v2/service_instances/i?service_id=s&plan_id=p',
      status: 410,
      body: {},
    },
    {
      broker: {},
      method: 'PUT',
      path: '/v2/service_instances/i/service_bindings/b',
      status: 201,
      body: { credentials: { uri: 'x://' }, endpoints: [{ host: 'h', ports: ['1'] }] },
    },
    {
      broker: { bind: async () => ({ async: false, alreadyExists: true, credentials: { uri: 'x://' } }) },
      method: 'PUT',
      path: '/v2/service_instances/i/service_bindings/b',
      status: 200,
      body: { credentials: { uri: 'x://' } },
    },
    {
      broker: { bind: async () => ({ async: true, alreadyExists: false, operation: 'op4', credentials: { leaked: 'no' } }) },
      method: 'PUT',
      path: '/v2/service_instances/i/service_bindings/b?accepts_incomplete=true',
      status: 202,
      body: { operation: 'op4' },
    },
    { broker: {}, method: 'DELETE', path: '/v2/service_instances/i/service_bindings/b?service_id=s&plan_id=p', status: 200, body: {} },
    {
      broker: { unbind: async () => ({ async: true, operation: 'op5' }) },
      method: 'DELETE',
      path: '/v2/service_instances/i/service_bindings/b?service_id=s&plan_id=p&accepts_incomplete=true',
      status: 202,
      body: { operation: 'op5' },
    },
    {
      broker: {
        update: async () => {
          throw concurrencyError();
        },
      },
      method: 'PATCH',
      path: '/v2/service_instances/i',
      status: 422,
      body: { error: 'ConcurrencyError', description: 'Another operation is in progress for this service instance.' },
    },
    {
      broker: {
        fetchInstance: async () => {
          throw badRequest('bad');
        },
      },
      method: 'GET',
      path: '/v2/service_instances/i',
      status: 400,
      body: { error: 'BadRequest', description: 'bad' },
    },
    {
      broker: {
        fetchInstance: async () => {
          throw new Error('password=hunter2 leaked');
        },
      },
      method: 'GET',
      path: '/v2/service_instances/i',
      status: 500,
      body: { error: 'InternalError', description: 'The broker failed to handle this request; its log has the details.' },
    },
  ];
  for (const row of cases) {
    const { client, close } = await serve(fakeBroker(row.broker));
    const reply = await client.request(row.method, row.path, row.method === 'PUT' || row.method === 'PATCH' ? {} : undefined);
    t.is(reply.status, row.status, `${row.method} ${row.path}`);
    t.deepEqual(reply.body, row.body, `${row.method} ${row.path}`);
    t.regex(reply.headers.get('content-type') ?? '', /application\/json/);
    await close();
  }
});

test('last_operation sends Retry-After while in progress', async (t) => {
  const { client, close } = await serve(fakeBroker());
  const reply = await client.request('GET', '/v2/service_instances/i/last_operation');
  t.is(reply.status, 200);
  t.deepEqual(reply.body, { state: 'in progress', description: 'working' });
  t.is(reply.headers.get('retry-after'), '1');
  const binding = await client.request('GET', '/v2/service_instances/i/service_bindings/b/last_operation');
  t.is(binding.headers.get('retry-after'), null);
  await close();
});

test('bodies: malformed JSON, non-objects and oversized bodies are refused before the broker sees them', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker, 2048);
  const malformed = await client.request('PUT', '/v2/service_instances/i', undefined, { rawBody: '{"service_id": ' });
  t.is(malformed.status, 400);
  t.is(malformed.body.error, 'MalformedJSON');
  const array = await client.request('PUT', '/v2/service_instances/i', [1, 2]);
  t.is(array.status, 400);
  t.is(array.body.description, 'The request body must be a JSON object.');
  const big = await client.request('PUT', '/v2/service_instances/i', { pad: 'x'.repeat(5000) });
  t.is(big.status, 413);
  t.is(big.body.error, 'PayloadTooLarge');
  t.is(broker.calls.length, 0);
  await close();
});

test('request identity is echoed; originating identity is optional and parsed leniently', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker);
  const reply = await client.request('GET', '/v2/catalog', undefined, { headers: { 'X-Broker-API-Request-Identity': 'req-42' } });
  t.is(reply.headers.get('x-broker-api-request-identity'), 'req-42');
  const identity = Buffer.from(JSON.stringify({ user_id: 'alice' })).toString('base64');
  const withIdentity = await client.request(
    'PUT',
    '/v2/service_instances/i',
    {},
    { headers: { 'X-Broker-API-Originating-Identity': `cloudfoundry ${identity}` } },
  );
  t.is(withIdentity.status, 201);
  t.deepEqual(broker.calls.at(-1)!.args[3], { requestId: undefined, originatingUser: 'cloudfoundry:alice' });
  const garbage = await client.request('PUT', '/v2/service_instances/i', {}, { headers: { 'X-Broker-API-Originating-Identity': 'kubernetes %%%' } });
  t.is(garbage.status, 201);
  await close();
});

test('fields newer than the client version are left out', async (t) => {
  const { client, close } = await serve(fakeBroker());
  const old = await client.request('GET', '/v2/catalog', undefined, { version: '2.13' });
  const service = old.body.services[0];
  t.is(service.instances_retrievable, undefined);
  t.is(service.allow_context_updates, undefined);
  t.is(service.plans[0].plan_updateable, undefined);
  t.is(service.plans[0].maintenance_info, undefined);
  t.is(service.plans[0].maximum_polling_duration, undefined);
  const latest = await client.request('GET', '/v2/catalog', undefined, { version: '2.17' });
  t.true(latest.body.services[0].instances_retrievable);
  t.deepEqual(latest.body.services[0].plans[0].maintenance_info, { version: '1.0.0' });
  const oldBind = await client.request('PUT', '/v2/service_instances/i/service_bindings/b', {}, { version: '2.14' });
  t.is(oldBind.body.endpoints, undefined);
  const oldFetch = await client.request('GET', '/v2/service_instances/i', undefined, { version: '2.14' });
  t.is(oldFetch.body.maintenance_info, undefined);
  await close();
});

test('asynchronous bindings are only offered to 2.14+ clients that accept them', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker);
  await client.request('PUT', '/v2/service_instances/i/service_bindings/b?accepts_incomplete=true', {}, { version: '2.13' });
  t.is(broker.calls.at(-1)!.args[3], false);
  await client.request('PUT', '/v2/service_instances/i/service_bindings/b?accepts_incomplete=true', {}, { version: '2.14' });
  t.is(broker.calls.at(-1)!.args[3], true);
  await client.request('PUT', '/v2/service_instances/i/service_bindings/b', {}, { version: '2.17' });
  t.is(broker.calls.at(-1)!.args[3], false);
  await close();
});

test('unknown routes answer JSON 404', async (t) => {
  const { client, close } = await serve(fakeBroker());
  const reply = await client.request('GET', '/v2/nothing');
  t.is(reply.status, 404);
  t.is(reply.body.error, 'NotFound');
  await close();
});

test('no request without accepts_incomplete (or before 2.14, for bindings) is ever answered 202', async (t) => {
  const running = fakeBroker({
    provision: async () => ({ async: true, alreadyExists: true, operation: 'op1', dashboardUrl: 'http://x/d' }),
    update: async () => ({ async: true, operation: 'op2' }),
    deprovision: async () => ({ async: true, operation: 'op3' }),
    bind: async () => ({ async: true, alreadyExists: true, operation: 'op4' }),
    unbind: async () => ({ async: true, operation: 'op5' }),
  });
  const { client, close } = await serve(running);
  const cases: Array<[string, string, string, string]> = [
    ['PUT', '/v2/service_instances/i', '2.17', 'AsyncRequired'],
    ['PATCH', '/v2/service_instances/i', '2.17', 'AsyncRequired'],
    ['DELETE', '/v2/service_instances/i?service_id=s&plan_id=p', '2.17', 'AsyncRequired'],
    ['PUT', '/v2/service_instances/i/service_bindings/b', '2.17', 'ConcurrencyError'],
    ['PUT', '/v2/service_instances/i/service_bindings/b?accepts_incomplete=true', '2.13', 'ConcurrencyError'],
    ['DELETE', '/v2/service_instances/i/service_bindings/b?service_id=s&plan_id=p', '2.17', 'ConcurrencyError'],
    ['DELETE', '/v2/service_instances/i/service_bindings/b?service_id=s&plan_id=p&accepts_incomplete=true', '2.13', 'ConcurrencyError'],
  ];
  for (const [method, path, version, error] of cases) {
    const reply = await client.request(method, path, bodyFor(method), { version });
    t.is(reply.status, 422, `${method} ${path} (${version})`);
    t.is(reply.body.error, error, `${method} ${path} (${version})`);
    t.is(reply.body.operation, undefined);
  }
  const allowed = await client.request('PUT', '/v2/service_instances/i/service_bindings/b?accepts_incomplete=true', {}, { version: '2.14' });
  t.is(allowed.status, 202);
  await close();
});

test('a known path with another method, or an unknown method, is 405 with an Allow header; an unknown path stays 404', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker);
  const cases: Array<[string, string, string[]]> = [
    ['POST', '/v2/catalog', ['GET', 'HEAD']],
    ['DELETE', '/v2/catalog', ['GET', 'HEAD']],
    ['POST', '/v2/service_instances/i', ['DELETE', 'GET', 'HEAD', 'PATCH', 'PUT']],
    ['PROPFIND', '/v2/service_instances/i', ['DELETE', 'GET', 'HEAD', 'PATCH', 'PUT']],
    ['PURGE', '/v2/service_instances/i/last_operation', ['GET', 'HEAD']],
    ['PATCH', '/v2/service_instances/i/service_bindings/b', ['DELETE', 'GET', 'HEAD', 'PUT']],
  ];
  for (const [method, path, allowed] of cases) {
    const reply = await client.request(method, path);
    t.is(reply.status, 405, `${method} ${path}`);
    t.deepEqual(
      (reply.headers.get('allow') ?? '')
        .split(',')
        .map((name) => name.trim())
        .sort(),
      allowed,
      `${method} ${path}`,
    );
    t.is(reply.body.error, 'MethodNotAllowed');
    t.regex(reply.headers.get('content-type') ?? '', /application\/json/);
  }
  for (const method of ['GET', 'PROPFIND']) {
    const unknown = await client.request(method, '/v2/nothing/here');
    t.is(unknown.status, 404, method);
    t.is(unknown.headers.get('allow'), null);
    t.is(unknown.body.error, 'NotFound');
  }
  // Credentials and the version are still checked first.
  t.is((await client.request('PROPFIND', '/v2/catalog', undefined, { auth: null })).status, 401);
  t.is((await client.request('POST', '/v2/catalog', undefined, { version: null })).status, 412);
  t.is(broker.calls.length, 0);
  await close();
});

test('the catalog carries an ETag per API version and answers If-None-Match with 304', async (t) => {
  const { client, close } = await serve(fakeBroker());
  const latest = await client.request('GET', '/v2/catalog');
  t.is(latest.status, 200);
  const etag = latest.headers.get('etag');
  t.regex(etag ?? '', /^"[\w-]+"$/);
  t.regex(latest.headers.get('content-type') ?? '', /application\/json/);
  t.is(latest.body.services[0].name, 'svc');
  const again = await client.request('GET', '/v2/catalog', undefined, { headers: { 'If-None-Match': etag! } });
  t.is(again.status, 304);
  t.is(again.body, '');
  t.is(again.headers.get('etag'), etag);
  t.is((await client.request('GET', '/v2/catalog', undefined, { headers: { 'If-None-Match': `W/${etag!}, "other"` } })).status, 304);
  t.is((await client.request('GET', '/v2/catalog', undefined, { headers: { 'If-None-Match': '"other"' } })).status, 200);
  // Later 2.x clients get the 2.17 catalog; older ones another body, so another tag.
  t.is((await client.request('GET', '/v2/catalog', undefined, { version: '2.18' })).headers.get('etag'), etag);
  const old = await client.request('GET', '/v2/catalog', undefined, { version: '2.13', headers: { 'If-None-Match': etag! } });
  t.is(old.status, 200);
  t.not(old.headers.get('etag'), etag);
  t.is(old.body.services[0].instances_retrievable, undefined);
  // A tag never stands in for credentials.
  t.is((await client.request('GET', '/v2/catalog', undefined, { auth: null, headers: { 'If-None-Match': etag! } })).status, 401);
  await close();
});

test('bodies nested too deep, with too many entries or too long strings are 400 naming the limit, before the broker sees them', async (t) => {
  const broker = fakeBroker();
  const { client, close } = await serve(broker, 1024 * 1024);
  const nested = (levels: number) => '{"a":'.repeat(levels - 1) + '{}' + '}'.repeat(levels - 1);
  const cases: Array<[string, string, RegExp]> = [
    ['3,000 levels', nested(3000), /nested more than 32 levels/],
    ['33 levels', nested(33), /nested more than 32 levels/],
    ['33 levels of arrays', `{"a":${'['.repeat(32)}${']'.repeat(32)}}`, /nested more than 32 levels/],
    ['an array of 1,001 items', JSON.stringify({ parameters: { list: Array.from({ length: 1001 }, () => 0) } }), /array of more than 1000 items/],
    ['an object of 1,001 keys', JSON.stringify({ context: Object.fromEntries(Array.from({ length: 1001 }, (_, i) => [`k${i}`, i])) }), /more than 1000 keys/],
    ['a string of 65,537 characters', JSON.stringify({ service_id: 'x'.repeat(65_537) }), /string longer than 65536 characters/],
    ['a key of 65,537 characters', JSON.stringify({ ['k'.repeat(65_537)]: 1 }), /string longer than 65536 characters/],
  ];
  for (const [what, raw, description] of cases) {
    const reply = await client.request('PUT', '/v2/service_instances/i', undefined, { rawBody: raw });
    t.is(reply.status, 400, what);
    t.is(reply.body.error, 'BadRequest', what);
    t.regex(reply.body.description, description, what);
  }
  t.is(broker.calls.length, 0);
  // Right at the limits is fine.
  const atLimits = {
    context: JSON.parse(nested(31)) as unknown,
    parameters: { list: Array.from({ length: 1000 }, () => 0), text: 'x'.repeat(65_536) },
  };
  t.is((await client.request('PUT', '/v2/service_instances/i', atLimits)).status, 201);
  t.is(broker.calls.length, 1);
  await close();
});
