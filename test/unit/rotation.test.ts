import test, { type ExecutionContext } from 'ava';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ListedInstance } from '../../src/api/listing.js';
import { DockerBroker } from '../../src/broker/broker.js';
import { CatalogError, loadCatalog } from '../../src/catalog/load.js';
import { CliError } from '../../src/cli/errors.js';
import { chosenBinding } from '../../src/cli/rotate.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import { createApp } from '../../src/http/app.js';
import { createLogger } from '../../src/log.js';
import { MemoryStore } from '../helpers/memory-store.js';
import { OsbClient, provisionBody } from '../helpers/osb-client.js';
import { ScriptedRuntime } from '../helpers/scripted-runtime.js';

// Binding rotation (OSB 2.17 binding_rotatable / predecessor_binding_id) with an in-memory store and a scripted
// runtime: every rule and refusal, and that a refusal creates nothing. test/rotation.test.ts does it with the engines.

const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/');
const ids = (name: string) => {
  const offering = definitions.find((definition) => definition.offering.name === name)!.offering;
  return { service: offering.id, small: offering.plans[0]!.id };
};
const PG = ids('postgresql');
const DRAIN = ids('syslog-drain');

async function setUp(t: ExecutionContext, catalogFastPath = true) {
  const store = new MemoryStore();
  const runtime = new ScriptedRuntime();
  const broker = new DockerBroker({
    config: { brokerId: 'rotation', portRange: { first: 50000, last: 50009 }, advertisedHost: 'db.example' },
    definitions,
    store,
    runtime,
    log: createLogger('silent'),
    portIsFree: async () => true,
    dashboardUrl: (instance) => `http://broker/dashboard/${instance.id}`,
    leases: { leaseMs: 1_500, sweepMs: 50 },
  });
  const app = createApp(broker, {
    username: 'u',
    password: 'p',
    bodyLimitBytes: 65536,
    log: createLogger('silent'),
    catalogFastPath,
    listing: () => broker.listing(),
  });
  const server = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  t.teardown(async () => {
    await broker.settle();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const client = new OsbClient(`http://127.0.0.1:${(server.address() as { port: number }).port}`, 'u', 'p');
  return { store, runtime, client };
}

async function readyInstance(client: OsbClient, id: string, offering = PG) {
  await client.provision(id, provisionBody(offering.service, offering.small));
  await client.waitForInstance(id);
}

const path2 = (instance: string, binding: string) => `/v2/service_instances/${instance}/service_bindings/${binding}`;
const ordinary = {
  service_id: PG.service,
  plan_id: PG.small,
  bind_resource: { app_guid: 'app-1' },
  context: { platform: 'cloudfoundry', binding_name: 'orders' },
};

test('the catalog says binding_rotatable only to 2.17 clients, through the fast path and through Koa alike; never for the syslog drain', async (t) => {
  for (const fastPath of [true, false]) {
    const { client } = await setUp(t, fastPath);
    const plans = async (version: string) => {
      const reply = await client.request('GET', '/v2/catalog', undefined, { version });
      t.is(reply.status, 200);
      return (reply.body.services as Array<{ name: string; plans: Array<Record<string, unknown>> }>).map((service) => ({
        name: service.name,
        rotatable: service.plans.map((plan) => plan.binding_rotatable),
      }));
    };
    const latest = await plans('2.17');
    for (const { name, rotatable } of latest) {
      // Every offering whose bind makes a user of its own rotates; the drain hands every binding the same URL.
      t.deepEqual(rotatable, name === 'syslog-drain' ? [undefined, undefined] : [true, true], `${name} (fast path ${fastPath})`);
    }
    t.deepEqual(await plans('2.18'), latest);
    for (const { rotatable } of await plans('2.16')) t.deepEqual(rotatable, [undefined, undefined]);
  }
});

test('a rotation makes a new user for the same app, records its predecessor, and leaves the predecessor as it was', async (t) => {
  const { store, runtime, client } = await setUp(t);
  await readyInstance(client, 'i');
  const first = await client.bind('i', 'b1', ordinary);
  t.is(first.status, 201);

  // The spec's rotation request: the predecessor's id alone.
  const rotated = await client.bind('i', 'b2', { predecessor_binding_id: 'b1' });
  t.is(rotated.status, 201, JSON.stringify(rotated.body));
  t.not(rotated.body.credentials.username, first.body.credentials.username);
  t.not(rotated.body.credentials.password, first.body.credentials.password);
  t.is(rotated.body.credentials.host, first.body.credentials.host);
  const predecessor = store.bindings.get('i/b1')!;
  const successor = store.bindings.get('i/b2')!;
  t.is(successor.predecessorBindingId, 'b1');
  t.is(successor.appGuid, 'app-1');
  t.deepEqual(successor.bindResource, { app_guid: 'app-1' });
  t.deepEqual(successor.parameters, predecessor.parameters);
  t.deepEqual(successor.context, ordinary.context);
  t.is(predecessor.state, 'ready');
  t.is(predecessor.predecessorBindingId, undefined);
  t.is(runtime.calls.filter((call) => call.step === 'unbind').length, 0);
  t.is((await client.request('GET', path2('i', 'b1'))).body.credentials.username, first.body.credentials.username);

  // The same rotation again is the same binding, also once the predecessor is gone, and with the ids sent too.
  const again = await client.bind('i', 'b2', { predecessor_binding_id: 'b1', service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } });
  t.is(again.status, 200);
  t.deepEqual(again.body.credentials, rotated.body.credentials);
  t.is((await client.unbind('i', 'b1', PG.service, PG.small)).status, 200);
  t.is((await client.bind('i', 'b2', { predecessor_binding_id: 'b1' })).status, 200);
  t.is((await client.request('GET', path2('i', 'b2'))).status, 200);
  // The same id as an ordinary bind, or with another predecessor, is another request.
  t.is((await client.bind('i', 'b2', ordinary)).status, 409);
  t.is((await client.bind('i', 'b2', { predecessor_binding_id: 'b3' })).status, 409);

  // A successor can be rotated in its turn; the listing shows whom each succeeds.
  t.is((await client.bind('i', 'b3', { predecessor_binding_id: 'b2' })).status, 201);
  const listed = await client.request('GET', '/broker/v1/instances');
  const bindings = (listed.body.instances as Array<{ id: string; bindings: Array<{ id: string; predecessor_id?: string }> }>).find(
    (instance) => instance.id === 'i',
  )!.bindings;
  t.deepEqual(
    bindings.map((binding) => [binding.id, binding.predecessor_id]),
    [
      ['b2', 'b1'],
      ['b3', 'b2'],
    ],
  );
});

test('an asynchronous rotation answers 202 and ends with the successor ready', async (t) => {
  const { store, runtime, client } = await setUp(t);
  await readyInstance(client, 'a');
  t.is((await client.bind('a', 'b1', ordinary)).status, 201);
  runtime.delays.bind = 300;
  const started = await client.bind('a', 'b2', { predecessor_binding_id: 'b1' }, true);
  t.is(started.status, 202);
  t.is((await client.waitForBinding('a', 'b2')).body.state, 'succeeded');
  t.is(store.bindings.get('a/b2')!.state, 'ready');
  t.is(store.bindings.get('a/b1')!.state, 'ready');
});

test('refused rotations: 400 (or 422 ConcurrencyError for a predecessor being created), and nothing is created', async (t) => {
  const { store, runtime, client } = await setUp(t);
  await readyInstance(client, 'r');
  await readyInstance(client, 'other');
  await readyInstance(client, 'drain', DRAIN);
  t.is((await client.bind('r', 'ready', ordinary)).status, 201);
  t.is((await client.bind('other', 'theirs', ordinary)).status, 201);
  t.is((await client.bind('r', 'gone', ordinary)).status, 201);
  t.is((await client.unbind('r', 'gone', PG.service, PG.small)).status, 200);
  t.is((await client.bind('drain', 'd1', { service_id: DRAIN.service, plan_id: DRAIN.small })).status, 201);
  runtime.failures.bind = 'role creation failed';
  t.is((await client.bind('r', 'broken', ordinary)).status, 503);
  delete runtime.failures.bind;
  runtime.delays.bind = 3_000;
  t.is((await client.bind('r', 'slow', ordinary, true)).status, 202);

  const bindings = store.bindings.size;
  const operations = store.operations.size;
  const refused = async (instance: string, body: Record<string, unknown>, status: number, error: string, description: RegExp, version?: string) => {
    const reply = await client.request('PUT', `${path2(instance, 'new')}?accepts_incomplete=true`, body, { version });
    t.is(reply.status, status, JSON.stringify(reply.body));
    t.is(reply.body.error, error);
    t.regex(reply.body.description, description);
  };
  await refused('r', { predecessor_binding_id: 'nope' }, 400, 'BadRequest', /predecessor_binding_id nope is not a binding of service instance r/);
  await refused('r', { predecessor_binding_id: 'theirs' }, 400, 'BadRequest', /not a binding of service instance r/);
  await refused('r', { predecessor_binding_id: 'gone' }, 400, 'BadRequest', /not a binding of service instance r/);
  await refused('r', { predecessor_binding_id: 'broken' }, 400, 'BadRequest', /is failed; only a ready binding can be rotated/);
  await refused('r', { predecessor_binding_id: 'slow' }, 422, 'ConcurrencyError', /still being created/);
  await refused('r', { predecessor_binding_id: '' }, 400, 'BadRequest', /must be a non-empty string/);
  await refused('r', { predecessor_binding_id: 42 }, 400, 'BadRequest', /must be a non-empty string/);
  await refused('r', { predecessor_binding_id: 'ready' }, 400, 'BadRequest', /needs X-Broker-API-Version 2\.17/, '2.16');
  await refused('drain', { predecessor_binding_id: 'd1' }, 400, 'BadRequest', /does not support binding rotation/);
  await refused('r', { predecessor_binding_id: 'ready', service_id: DRAIN.service }, 400, 'BadRequest', /service_id does not match/);
  await refused('r', { predecessor_binding_id: 'ready', plan_id: DRAIN.small, service_id: PG.service }, 400, 'BadRequest', /is not a plan of postgresql/);
  await refused(
    'r',
    { predecessor_binding_id: 'ready', bind_resource: { app_guid: 'app-2' } },
    400,
    'BadRequest',
    /keeps the predecessor binding's app_guid, bind_resource/,
  );
  await refused('r', { predecessor_binding_id: 'ready', parameters: { anything: 1 } }, 400, 'BadRequest', /unknown parameter "anything"/);
  await refused('nope', { predecessor_binding_id: 'ready' }, 400, 'BadRequest', /Service instance nope does not exist/);
  t.is(store.bindings.size, bindings);
  t.is(store.operations.size, operations);
  t.is(store.bindings.get('r/new'), undefined);

  // The same terms sent again are not a change; an empty bind_resource counts as absent.
  t.is((await client.bind('r', 'same', { predecessor_binding_id: 'ready', bind_resource: { app_guid: 'app-1' }, parameters: {} })).status, 201);
  t.is((await client.bind('r', 'empty', { predecessor_binding_id: 'ready', bind_resource: {} })).status, 201);
});

test('a plan that says binding_rotatable without a bind script stops the broker, naming the field', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'osb-rotation-catalog-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(path.join(PACKAGE_ROOT, 'catalog', 'syslog-drain'), path.join(dir, 'syslog-drain'), { recursive: true });
  const file = path.join(dir, 'syslog-drain', 'service.json');
  const service = JSON.parse(readFileSync(file, 'utf8')) as { offering: { plans: Array<Record<string, unknown>> } };
  service.offering.plans[1]!.binding_rotatable = true;
  writeFileSync(file, JSON.stringify(service));
  const error = t.throws(() => loadCatalog(dir, 'x/'), { instanceOf: CatalogError });
  t.regex(error.message, /offering\.plans\[1\]\.binding_rotatable needs scripts\/bind/);

  service.offering.plans[1]!.binding_rotatable = 'yes';
  writeFileSync(file, JSON.stringify(service));
  t.throws(() => loadCatalog(dir, 'x/'), { instanceOf: CatalogError, message: /binding_rotatable must be true or false/ });
});

test('osb-docker rotate picks the only ready binding, or the one --as names by id or name, and refuses to guess', (t) => {
  const binding = (id: string, name: string | undefined, state = 'ready') => ({ id, ...(name ? { name } : {}), state, created_at: '2026-11-30T00:00:00Z' });
  const instance = (...bindings: Array<ReturnType<typeof binding>>) =>
    ({
      id: 'i',
      name: 'orders',
      service_id: 's',
      service_name: 'postgresql',
      plan_id: 'p',
      plan_name: 'small',
      state: 'ready',
      dashboard_url: '',
      created_at: '',
      bindings,
    }) as ListedInstance;

  t.is(chosenBinding(instance(binding('b1', 'app'), binding('b0', 'old', 'deleting')), undefined).id, 'b1');
  t.throws(() => chosenBinding(instance(), undefined), {
    instanceOf: CliError,
    message: /orders has no ready binding to rotate; create one with `osb-docker bind orders`/,
  });
  t.throws(() => chosenBinding(instance(binding('b1', 'app'), binding('b2', 'report')), undefined), {
    message: /orders has 2 bindings \(app, report\); name the one to rotate with --as/,
  });
  t.is(chosenBinding(instance(binding('b1', 'app'), binding('b2', 'report')), 'report').id, 'b2');
  // A rotation not finished yet: two bindings share the name; the id tells them apart.
  const overlapping = instance(binding('b1', 'app'), binding('b2', 'app'));
  t.throws(() => chosenBinding(overlapping, 'app'), { message: /2 ready bindings of orders are named "app"; give one by id: b1, b2/ });
  t.is(chosenBinding(overlapping, 'b2').id, 'b2');
  t.throws(() => chosenBinding(overlapping, 'nope'), { message: /orders has no ready binding named "nope"; bindings: app, app/ });
});
