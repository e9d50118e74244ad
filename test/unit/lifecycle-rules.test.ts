import test from 'ava';
import type { Server } from 'node:http';
import { DockerBroker } from '../../src/broker/broker.js';
import { PortTakenError } from '../../src/broker/contracts.js';
import { loadCatalog } from '../../src/catalog/load.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import { createApp } from '../../src/http/app.js';
import { createLogger } from '../../src/log.js';
import { MemoryStore } from '../helpers/memory-store.js';
import { OsbClient, provisionBody } from '../helpers/osb-client.js';
import { ScriptedRuntime } from '../helpers/scripted-runtime.js';
import path from 'node:path';

// The lifecycle's status-code and concurrency rules with an in-memory store and a scripted runtime: fast, so every
// rule gets a case. The same rules are exercised against Redis and the Docker engine in the engine tests. A step that
// must still run when the next request arrives takes seconds, so a machine loaded by the engine tests never finishes it first.
const PG = { service: 'd0fc228f-54d1-4bed-8dd0-38c7a33c4500', small: 'fdc3b78d-156f-4bac-aba4-242250cc5840', medium: '95ea88b7-404d-4f29-bb9b-7c69ceb825bb' };
const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/');

/** A certificate renewal held until `release` (or aborted), standing in for InstanceTls.renew. */
class HeldRenewal {
  calls = 0;
  release!: () => void;
  private held = new Promise<void>((resolve) => (this.release = resolve));
  readonly tls = {
    caCertificate: () => 'CA',
    renew: async (_instance: unknown, { signal }: { signal: AbortSignal }) => {
      this.calls++;
      await Promise.race([this.held, new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error)))]);
      return undefined;
    },
  };
}

function newBroker(store: MemoryStore, runtime: ScriptedRuntime, renewal?: HeldRenewal): DockerBroker {
  return new DockerBroker({
    ...(renewal ? { tls: renewal.tls } : {}),
    config: { brokerId: 'rules', portRange: { first: 50000, last: 50009 }, advertisedHost: 'db.example' },
    definitions,
    store,
    runtime,
    log: createLogger('silent'),
    portIsFree: async () => true,
    dashboardUrl: (instance) => `http://broker/dashboard/${instance.id}`,
    // Long enough for a loaded machine (the suite runs engine tests alongside); short enough for the take-over tests.
    leases: { leaseMs: 1_500, sweepMs: 50 },
  });
}

async function setUp(t: { teardown(fn: () => Promise<void>): void }, renewal?: HeldRenewal) {
  const store = new MemoryStore();
  const runtime = new ScriptedRuntime();
  const broker = newBroker(store, runtime, renewal);
  const app = createApp(broker, { username: 'u', password: 'p', bodyLimitBytes: 65536, log: createLogger('silent') });
  const server = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  t.teardown(async () => {
    await broker.settle();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const client = new OsbClient(`http://127.0.0.1:${(server.address() as { port: number }).port}`, 'u', 'p');
  return { store, runtime, broker, client };
}

test('provision: 422 without accepts_incomplete and nothing stored; 202, the same 202 again, 409 for other attributes, 200 once ready', async (t) => {
  const { store, runtime, client } = await setUp(t);
  runtime.delays.start = 2_000;
  const sync = await client.provision('a', provisionBody(PG.service, PG.small), false);
  t.is(sync.status, 422);
  t.is(sync.body.error, 'AsyncRequired');
  t.is(store.instances.size + store.operations.size, 0);

  const first = await client.provision('a', provisionBody(PG.service, PG.small));
  t.is(first.status, 202);
  const again = await client.provision('a', provisionBody(PG.service, PG.small));
  t.is(again.status, 202);
  t.is(again.body.operation, first.body.operation);
  t.is((await client.provision('a', provisionBody(PG.service, PG.medium))).status, 409);
  t.is((await client.waitForInstance('a', first.body.operation)).body.state, 'succeeded');
  t.is((await client.provision('a', provisionBody(PG.service, PG.small))).status, 200);
  t.is(runtime.calls.filter((call) => call.step === 'start').length, 1);
});

test('an update while provisioning is a ConcurrencyError; a second update while one runs too, unless it is the same', async (t) => {
  const { runtime, client } = await setUp(t);
  runtime.delays.start = 2_000;
  await client.provision('b', provisionBody(PG.service, PG.small));
  const early = await client.request('PATCH', '/v2/service_instances/b?accepts_incomplete=true', { service_id: PG.service, plan_id: PG.medium });
  t.is(early.status, 422);
  t.is(early.body.error, 'ConcurrencyError');
  await client.waitForInstance('b');

  runtime.delays.configure = 2_000;
  const update = await client.request('PATCH', '/v2/service_instances/b?accepts_incomplete=true', { service_id: PG.service, plan_id: PG.medium });
  t.is(update.status, 202);
  const same = await client.request('PATCH', '/v2/service_instances/b?accepts_incomplete=true', { service_id: PG.service, plan_id: PG.medium });
  t.is(same.status, 202);
  t.is(same.body.operation, update.body.operation);
  const other = await client.request('PATCH', '/v2/service_instances/b?accepts_incomplete=true', { service_id: PG.service, plan_id: PG.small });
  t.is(other.status, 422);
  t.is((await client.waitForInstance('b', update.body.operation)).body.state, 'succeeded');
});

test('a TLS renewal is an instance operation: an update meanwhile waits for its end, then goes ahead', async (t) => {
  const renewal = new HeldRenewal();
  const { store, broker, client } = await setUp(t, renewal);
  await client.provision('r', provisionBody(PG.service, PG.small));
  await client.waitForInstance('r');
  const renewed = broker.tlsRenewals!.renew('r');
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.deepEqual((await client.lastOperation('r')).body, { state: 'in progress', description: 'Renewing the TLS certificate.' });
  let answered = false;
  const update = client.request('PATCH', '/v2/service_instances/r?accepts_incomplete=true', { service_id: PG.service, plan_id: PG.medium }).finally(() => {
    answered = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.false(answered, 'the update waits while the renewal runs');
  t.is(await broker.tlsRenewals!.renew('r'), false, 'a busy instance is renewed by the next pass');
  renewal.release();
  t.true(await renewed);
  // The update may have started and even ended already: the renewal is read as it was recorded.
  const recorded = [...store.operations.values()].find((operation) => operation.type === 'tls-renewal');
  t.is(recorded?.state, 'succeeded');
  t.regex(String(recorded?.description), /^Renewed the TLS certificate/);
  const updated = await update;
  t.is(updated.status, 202, JSON.stringify(updated.body));
  t.is((await client.waitForInstance('r', updated.body.operation)).body.state, 'succeeded');
  t.is(renewal.calls, 1);
});

test('a deprovision during a TLS renewal stops it and deletes the instance', async (t) => {
  const renewal = new HeldRenewal();
  const { broker, client } = await setUp(t, renewal);
  await client.provision('s', provisionBody(PG.service, PG.small));
  await client.waitForInstance('s');
  const renewed = broker.tlsRenewals!.renew('s');
  await new Promise((resolve) => setTimeout(resolve, 100));
  const deprovision = await client.deprovision('s', PG.service, PG.small);
  t.is(deprovision.status, 202);
  t.is((await client.waitForInstance('s', deprovision.body.operation)).body.state, 'succeeded');
  t.false(await renewed, 'the renewal was stopped');
});

test('a deprovision during provisioning cancels it, removes what it made and frees its ports', async (t) => {
  const { store, runtime, client } = await setUp(t);
  runtime.delays.start = 5_000;
  const provision = await client.provision('c', provisionBody(PG.service, PG.small));
  t.is(provision.status, 202);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const started = Date.now();
  const deprovision = await client.deprovision('c', PG.service, PG.small);
  t.is(deprovision.status, 202);
  t.is((await client.waitForInstance('c', deprovision.body.operation)).body.state, 'succeeded');
  t.true(Date.now() - started < 4_000, 'the running start was aborted, not waited out');
  t.is((await client.lastOperation('c', provision.body.operation)).body.state, 'failed');
  t.false(runtime.running.has('c'));
  t.is(store.ports.size, 0);
  t.is((await client.deprovision('c', PG.service, PG.small)).status, 410);
});

test('a failed start leaves a failed instance with no ports; asking again provisions it again', async (t) => {
  const { store, runtime, client } = await setUp(t);
  runtime.failures.start = 'the engine said no';
  const first = await client.provision('d', provisionBody(PG.service, PG.small));
  const failed = await client.waitForInstance('d', first.body.operation);
  t.is(failed.body.state, 'failed');
  t.regex(failed.body.description, /the engine said no/);
  t.is(store.ports.size, 0);
  runtime.failures = {};
  const retry = await client.provision('d', provisionBody(PG.service, PG.small));
  t.is(retry.status, 202);
  t.is((await client.waitForInstance('d', retry.body.operation)).body.state, 'succeeded');
  t.is(store.ports.size, 1);
});

test('bind: synchronous for 2.13, idempotent, 409 for other attributes, 410 to unbind what does not exist', async (t) => {
  const { client } = await setUp(t);
  await client.provision('e', provisionBody(PG.service, PG.small));
  await client.waitForInstance('e');
  const body = { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } };
  const created = await client.request('PUT', '/v2/service_instances/e/service_bindings/b1?accepts_incomplete=true', body, { version: '2.13' });
  t.is(created.status, 201);
  t.is(created.body.credentials.host, 'db.example');
  const again = await client.bind('e', 'b1', body);
  t.is(again.status, 200);
  t.deepEqual(again.body.credentials, created.body.credentials);
  t.is((await client.bind('e', 'b1', { ...body, bind_resource: { app_guid: 'app-2' } })).status, 409);
  t.is((await client.unbind('e', 'nope', PG.service, PG.small)).status, 410);
  t.is((await client.unbind('e', 'b1', PG.service, PG.small)).status, 200);
  t.is((await client.unbind('e', 'b1', PG.service, PG.small)).status, 410);
});

test('bind: asynchronous for 2.14+ clients that accept it; a deprovision waits while a binding is being created', async (t) => {
  const { runtime, client } = await setUp(t);
  await client.provision('f', provisionBody(PG.service, PG.small));
  await client.waitForInstance('f');
  runtime.delays.bind = 2_000;
  const started = await client.bind('f', 'b1', { service_id: PG.service, plan_id: PG.small }, true);
  t.is(started.status, 202);
  const deprovision = await client.deprovision('f', PG.service, PG.small);
  t.is(deprovision.status, 422);
  t.is(deprovision.body.error, 'ConcurrencyError');
  t.is((await client.waitForBinding('f', 'b1')).body.state, 'succeeded');
  t.is((await client.request('GET', '/v2/service_instances/f/service_bindings/b1')).status, 200);
});

test('two instances never share a host port, and a full range fails the provision with a clear reason', async (t) => {
  const { store, client } = await setUp(t);
  for (const id of ['g1', 'g2']) {
    await client.provision(id, provisionBody(PG.service, PG.small));
    await client.waitForInstance(id);
  }
  t.deepEqual([...store.ports.values()].sort(), ['g1', 'g2']);
  for (let port = 50002; port <= 50009; port++) store.ports.set(String(port), 'someone-else');
  const full = await client.provision('g3', provisionBody(PG.service, PG.small));
  const failed = await client.waitForInstance('g3', full.body.operation);
  t.is(failed.body.state, 'failed');
  t.regex(failed.body.description, /no free host port left in BROKER_PORT_RANGE 50000-50009/);
});

test('a second process of the same broker never takes live work, and takes it over once it is handed back', async (t) => {
  const { store, runtime, broker, client } = await setUp(t);
  runtime.delays.start = 5_000;
  const accepted = await client.provision('h', provisionBody(PG.service, PG.small));
  const second = newBroker(store, runtime);
  t.is(await second.runner.sweep(), 0, 'the lease of the running provision keeps the second process away');
  // Longer than the lease: only renewal keeps it.
  await new Promise((resolve) => setTimeout(resolve, 2_500));
  t.is(await second.runner.sweep(), 0, 'the first process renews its lease while it works');

  await broker.handBack();
  t.is((await store.getOperation(accepted.body.operation))?.state, 'in progress', 'handed back, not failed');
  t.false(await store.leaseHeld(accepted.body.operation), 'its lease is given up, and no late heartbeat takes it back');
  await new Promise((resolve) => setTimeout(resolve, 700));
  t.false(await store.leaseHeld(accepted.body.operation), 'still free after more than one heartbeat interval');
  t.is(await second.runner.sweep(), 1);
  await second.settle();
  t.is((await store.getOperation(accepted.body.operation))?.state, 'succeeded');
  t.is(runtime.running.size, 1);
});

test('an operation queued behind a step that cannot be interrupted keeps its lease while it waits', async (t) => {
  const { store, runtime, broker, client } = await setUp(t);
  runtime.delays.start = 5_000;
  runtime.unabortable.add('start'); // as an image build: the cancelled provision still runs to its end
  const accepted = await client.provision('q', provisionBody(PG.service, PG.small));
  const deleting = await client.deprovision('q', PG.service, PG.small);
  t.is(deleting.status, 202);
  const second = newBroker(store, runtime);
  // Twice the lease: only renewal keeps the queued deprovision from looking abandoned.
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  t.is(await second.runner.sweep(), 0, 'neither the running provision nor the queued deprovision is taken over');
  await broker.settle();
  t.not((await store.getOperation(accepted.body.operation))?.state, 'in progress');
  t.is((await store.getOperation(deleting.body.operation))?.state, 'succeeded');
  t.false(runtime.running.has('q'));
});

test('a deprovision on one process stops the provision running on another', async (t) => {
  const { store, runtime, client } = await setUp(t);
  runtime.delays.start = 10_000;
  const accepted = await client.provision('k', provisionBody(PG.service, PG.small));
  await new Promise((resolve) => setTimeout(resolve, 100));
  // The other process serves the deprovision; the provision runs on the first one.
  const second = newBroker(store, runtime);
  const started = Date.now();
  const deprovision = await second.deprovision('k', { service_id: PG.service, plan_id: PG.small }, true, {});
  t.true(deprovision.async);
  await second.settle();
  t.true(Date.now() - started < 5_000, 'the provision stopped at its next heartbeat instead of running to its end');
  t.is((await store.getOperation(accepted.body.operation))?.state, 'failed');
  t.is((await store.getOperation(deprovision.operation!))?.state, 'succeeded');
  t.false(runtime.running.has('k'));
  t.is(store.ports.size, 0);
});

test('a bind or unbind still running is a ConcurrencyError for a client that did not allow an asynchronous answer, never a 202', async (t) => {
  const { runtime, client } = await setUp(t);
  await client.provision('m', provisionBody(PG.service, PG.small));
  await client.waitForInstance('m');
  const body = { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } };
  runtime.delays.bind = 2_000;
  const started = await client.bind('m', 'b1', body, true);
  t.is(started.status, 202);
  for (const [accepts, version] of [
    [false, '2.17'],
    [true, '2.13'],
  ] as const) {
    const path = `/v2/service_instances/m/service_bindings/b1${accepts ? '?accepts_incomplete=true' : ''}`;
    const sync = await client.request('PUT', path, body, { version });
    t.is(sync.status, 422, `bind, ${version}`);
    t.is(sync.body.error, 'ConcurrencyError');
    t.is(sync.body.credentials, undefined);
  }
  const again = await client.bind('m', 'b1', body, true);
  t.is(again.status, 202);
  t.is(again.body.operation, started.body.operation);
  t.is((await client.waitForBinding('m', 'b1')).body.state, 'succeeded');

  runtime.delays.unbind = 2_000;
  const unbinding = await client.unbind('m', 'b1', PG.service, PG.small, true);
  t.is(unbinding.status, 202);
  const syncUnbind = await client.unbind('m', 'b1', PG.service, PG.small);
  t.is(syncUnbind.status, 422);
  t.is(syncUnbind.body.error, 'ConcurrencyError');
  const unbindAgain = await client.unbind('m', 'b1', PG.service, PG.small, true);
  t.is(unbindAgain.status, 202);
  t.is(unbindAgain.body.operation, unbinding.body.operation);
  t.is((await client.waitForBinding('m', 'b1')).body.state, 'succeeded');
  t.is((await client.unbind('m', 'b1', PG.service, PG.small)).status, 410);
});

test('a provision, update or deprovision still running is AsyncRequired for a request without accepts_incomplete', async (t) => {
  const { runtime, client } = await setUp(t);
  runtime.delays.start = 2_000;
  const provision = await client.provision('n', provisionBody(PG.service, PG.small));
  t.is(provision.status, 202);
  const syncProvision = await client.provision('n', provisionBody(PG.service, PG.small), false);
  t.is(syncProvision.status, 422);
  t.is(syncProvision.body.error, 'AsyncRequired');
  await client.waitForInstance('n');

  runtime.delays.configure = 2_000;
  const update = { service_id: PG.service, plan_id: PG.medium };
  t.is((await client.request('PATCH', '/v2/service_instances/n?accepts_incomplete=true', update)).status, 202);
  const syncUpdate = await client.request('PATCH', '/v2/service_instances/n', update);
  t.is(syncUpdate.status, 422);
  t.is(syncUpdate.body.error, 'AsyncRequired');
  await client.waitForInstance('n');

  runtime.delays.destroy = 2_000;
  t.is((await client.deprovision('n', PG.service, PG.medium)).status, 202);
  const syncDeprovision = await client.deprovision('n', PG.service, PG.medium, false);
  t.is(syncDeprovision.status, 422);
  t.is(syncDeprovision.body.error, 'AsyncRequired');
  t.is((await client.waitForInstance('n')).body.state, 'succeeded');
});

test('last_operation reads the store once; an operation of another resource is never reported for this one', async (t) => {
  const { store, client } = await setUp(t);
  const first = await client.provision('p1', provisionBody(PG.service, PG.small));
  const other = await client.provision('p2', provisionBody(PG.service, PG.small));
  await client.waitForInstance('p1');
  await client.waitForInstance('p2');
  await client.bind('p1', 'b1', { service_id: PG.service, plan_id: PG.small });

  const reads: string[] = [];
  for (const method of ['getInstance', 'getBinding', 'getOperation', 'latestOperation', 'listInstances', 'listBindings'] as const) {
    const original = store[method].bind(store) as (...args: unknown[]) => Promise<unknown>;
    (store as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
      reads.push(method);
      return original(...args);
    };
  }
  const latest = await client.lastOperation('p1');
  t.deepEqual(latest.body, { state: 'succeeded', description: 'The service instance is ready.' });
  t.deepEqual(reads, ['latestOperation']);
  reads.length = 0;
  t.is((await client.lastOperation('p1', first.body.operation)).body.state, 'succeeded');
  t.deepEqual(reads, ['getOperation']);
  reads.length = 0;
  t.is((await client.request('GET', '/v2/service_instances/p1/service_bindings/b1/last_operation')).body.description, 'The service binding is ready.');
  t.deepEqual(reads, ['latestOperation']);

  // Another instance's operation, or a binding's, is not this instance's: its own latest one is reported.
  t.is((await client.lastOperation('p1', other.body.operation)).body.description, 'The service instance is ready.');
  const bindOperation = [...store.operations.values()].find((operation) => operation.type === 'bind')!;
  t.is((await client.lastOperation('p1', bindOperation.id)).body.description, 'The service instance is ready.');
  t.is((await client.lastOperation('p1', 'no-such-operation')).body.description, 'The service instance is ready.');
  t.is((await client.lastOperation('p3')).status, 404);
  t.is((await client.lastOperation('p3', first.body.operation)).status, 404);
  t.is((await client.request('GET', '/v2/service_instances/p1/service_bindings/b2/last_operation')).status, 404);
});

test('a write that fails after an operation was recorded ends that operation as failed, never in progress', async (t) => {
  const { store, client } = await setUp(t);
  await client.provision('q', provisionBody(PG.service, PG.small));
  await client.waitForInstance('q');
  const putBinding = store.putBinding.bind(store);
  store.putBinding = async () => {
    throw new Error('the store refused the write');
  };
  const bind = await client.bind('q', 'b1', { service_id: PG.service, plan_id: PG.small }, true);
  t.is(bind.status, 500);
  store.putBinding = putBinding;
  const bindOperations = [...store.operations.values()].filter((operation) => operation.type === 'bind');
  t.is(bindOperations.length, 1);
  t.is(bindOperations[0]!.state, 'failed');
  t.is(store.bindings.size, 0);
  t.is((await client.bind('q', 'b1', { service_id: PG.service, plan_id: PG.small })).status, 201, 'asking again works');
});

test('a host port the engine says is taken, though the probe finds it free, is not chosen again by that provision', async (t) => {
  const { runtime, client, store } = await setUp(t);
  // The broker's probe says every port is free (as from another network namespace); the engine refuses 50000.
  const start = runtime.start.bind(runtime);
  runtime.start = async (definition, instance, signal, progress) => {
    if (instance.hostPort === 50000) throw new PortTakenError('listen tcp4 0.0.0.0:50000: bind: address already in use');
    return start(definition, instance, signal, progress);
  };
  const accepted = await client.provision('squatted', provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202);
  const done = await client.waitForInstance('squatted', accepted.body.operation);
  t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
  const port = store.instances.get('squatted')?.hostPort;
  t.not(port, undefined);
  t.not(port, 50000);
});
