import test from 'ava';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { DriftRuntime, InstanceEvent } from '../../src/broker/contracts.js';
import { Offerings } from '../../src/broker/offerings.js';
import { assess, describeHealth, Reconciler } from '../../src/broker/reconciler.js';
import { loadCatalog } from '../../src/catalog/load.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import type { ContainerSummary } from '../../src/docker/types.js';
import { createLogger } from '../../src/log.js';
import type { InstanceRecord, OperationRecord } from '../../src/store/records.js';
import { MemoryStore } from '../helpers/memory-store.js';

// The reconciler's rules with the in-memory store and a fake engine: what it repairs, what it only reports, what it
// never touches, and that two processes sharing one store act once. The real engine is in test/drift.test.ts.

const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/');
const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const catalogVersion = definitions.find((definition) => definition.offering.id === REDIS.service)!.maintenanceInfo.version;

function instanceRecord(id: string, extra: Partial<InstanceRecord> = {}): InstanceRecord {
  return {
    id,
    serviceId: REDIS.service,
    planId: REDIS.small,
    organizationGuid: 'org',
    spaceGuid: 'space',
    context: {},
    requestedParameters: {},
    parameters: {},
    maintenanceVersion: catalogVersion,
    state: 'ready',
    containerName: `c-${id}`,
    volumeName: `v-${id}`,
    hostPort: 50000,
    createdAt: '2026-01-01T00:00:00.000Z',
    updatedAt: '2026-01-01T00:00:00.000Z',
    lastOperationId: `op-${id}`,
    secrets: { adminPassword: 'secret' },
    ...extra,
  };
}

function operation(id: string, instanceId: string, state: OperationRecord['state']): OperationRecord {
  return { id, type: 'provision', instanceId, state, description: '', createdAt: '2026-01-01T00:00:00.000Z' };
}

const summary = (name: string, status: string, extra: Partial<ContainerSummary> = {}): ContainerSummary => ({
  id: name,
  name,
  image: 'img',
  running: status === 'running' || status === 'paused',
  status,
  labels: {},
  env: [],
  restartCount: 0,
  createdAt: '2026-01-01T00:00:00Z',
  startedAt: '2026-01-01T00:00:01.123456789Z',
  finishedAt: '2026-01-01T00:10:00.5Z',
  ...extra,
});

/** Containers and volumes in memory, and a note of every start; `restartMs` makes each repair take that long. */
class FakeEngine implements DriftRuntime {
  readonly containers = new Map<string, ContainerSummary>();
  readonly volumes = new Set<string>();
  readonly repairs: Array<{ step: 'restart' | 'start'; instanceId: string }> = [];
  failure?: string;
  restartMs = 0;
  private listener?: (event: InstanceEvent) => void;

  async inspect(instance: InstanceRecord) {
    return this.containers.get(instance.containerName);
  }
  async volumeExists(instance: InstanceRecord) {
    return this.volumes.has(instance.volumeName);
  }
  private async bringUp(step: 'restart' | 'start', instance: InstanceRecord, signal: AbortSignal) {
    this.repairs.push({ step, instanceId: instance.id });
    if (this.restartMs) await delay(this.restartMs, undefined, { signal });
    if (this.failure) throw new Error(this.failure);
    this.volumes.add(instance.volumeName);
    this.containers.set(instance.containerName, summary(instance.containerName, 'running'));
  }
  async restart(_definition: unknown, instance: InstanceRecord, signal: AbortSignal) {
    await this.bringUp('restart', instance, signal);
  }
  async start(_definition: unknown, instance: InstanceRecord, signal: AbortSignal) {
    await this.bringUp('start', instance, signal);
  }
  async watch(onEvent: (event: InstanceEvent) => void, signal: AbortSignal) {
    this.listener = onEvent;
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  }
  emit(event: InstanceEvent) {
    this.listener?.(event);
  }
}

function setUp(t: { teardown(fn: () => Promise<void>): void }, store = new MemoryStore(), engine = new FakeEngine()) {
  const reconciler = new Reconciler({ store, runtime: engine, offerings: new Offerings(definitions), log: createLogger('silent') }, { intervalMs: 60_000 });
  t.teardown(() => reconciler.stop());
  return { store, engine, reconciler };
}

async function readyInstance(
  store: MemoryStore,
  engine: FakeEngine,
  id: string,
  status: string | undefined,
  volume = true,
  extra: Partial<InstanceRecord> = {},
) {
  const instance = instanceRecord(id, extra);
  await store.putInstance(instance);
  await store.putOperation(operation(instance.lastOperationId, id, 'succeeded'));
  if (status) engine.containers.set(instance.containerName, summary(instance.containerName, status, { exitCode: 137 }));
  if (volume) engine.volumes.add(instance.volumeName);
  return instance;
}

test('assess: running is fine; stopped is started again; removed with its volume is made again; a missing volume, a paused or restarting container are only reported', async (t) => {
  const instance = instanceRecord('a');
  const volume = (present: boolean) => async () => present;
  t.is((await assess(instance, catalogVersion, summary('c', 'running'), volume(true))).kind, 'running');
  const killed = await assess(instance, catalogVersion, summary('c', 'exited', { exitCode: 137 }), volume(true));
  t.deepEqual(killed, { kind: 'restart', since: '2026-01-01T00:10:00Z', reason: 'container exited with code 137 (killed)', cause: 'stopped' });
  const oom = await assess(instance, catalogVersion, summary('c', 'exited', { exitCode: 137, oomKilled: true }), volume(true));
  t.regex((oom as { reason: string }).reason, /out of memory/);
  t.like(await assess(instance, catalogVersion, undefined, volume(true)), { kind: 'recreate', cause: 'removed' });
  const lost = await assess(instance, catalogVersion, undefined, volume(false));
  t.like(lost, { kind: 'report', cause: 'volume-missing' });
  t.regex((lost as { reason: string }).reason, /^data volume missing \(v-a\).*deprovision and provision again, or restore the volume$/);
  t.like(await assess(instance, '99.0.0', undefined, volume(true)), { kind: 'report', cause: 'version-gone' });
  t.like(await assess(instance, catalogVersion, summary('c', 'restarting', { exitCode: 1 }), volume(true)), { kind: 'report', cause: 'restarting' });
  t.like(await assess(instance, catalogVersion, summary('c', 'paused'), volume(true)), { kind: 'report', cause: 'paused' });
});

test('a killed container is started again and the record says so; a second look changes nothing', async (t) => {
  const { store, engine, reconciler } = setUp(t);
  await readyInstance(store, engine, 'a', 'exited');
  await reconciler.pass();
  t.deepEqual(engine.repairs, [{ step: 'restart', instanceId: 'a' }]);
  const health = (await store.getHealth('a'))!;
  t.like(health, { state: 'repaired', since: '2026-01-01T00:10:00Z', reason: 'container exited with code 137 (killed)', repair: 'restarted' });
  t.regex(
    describeHealth(health),
    /^down since 2026-01-01T00:10:00Z: container exited with code 137 \(killed\); restarted by the broker at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
  );
  await reconciler.pass();
  t.is(engine.repairs.length, 1);
  t.deepEqual(await store.getHealth('a'), health);
  t.like(reconciler.snapshot(), { instances: { running: 0, down: 0, repaired: 1 }, drift: { detected: 1, restarted: 1, recreated: 0, repairFailed: 0 } });
});

test('a removed container is made again from its volume; a missing volume is reported and nothing is made', async (t) => {
  const { store, engine, reconciler } = setUp(t);
  await readyInstance(store, engine, 'kept', undefined, true);
  await readyInstance(store, engine, 'lost', undefined, false);
  await reconciler.pass();
  t.deepEqual(engine.repairs, [{ step: 'start', instanceId: 'kept' }]);
  t.like(await store.getHealth('kept'), { state: 'repaired', repair: 'recreated', cause: 'removed' });
  const lost = (await store.getHealth('lost'))!;
  t.like(lost, { state: 'down', cause: 'volume-missing' });
  t.false(engine.volumes.has('v-lost'), 'no volume was made for the lost instance');
  await reconciler.pass();
  t.is(engine.repairs.length, 1, 'a reported instance stays untouched');
  t.is((await store.getHealth('lost'))!.since, lost.since, 'still down since the first time');
  t.like(reconciler.snapshot(), { instances: { running: 0, down: 1, repaired: 1 }, drift: { detected: 2, recreated: 1, volumeMissing: 1 } });
});

test('an instance with an operation in progress, a binding being made, or a state other than ready is never touched', async (t) => {
  const { store, engine, reconciler } = setUp(t);
  const busy = await readyInstance(store, engine, 'busy', 'exited');
  await store.putOperation(operation(busy.lastOperationId, 'busy', 'in progress'));
  await readyInstance(store, engine, 'binding', 'exited');
  await store.putBinding({
    id: 'b',
    instanceId: 'binding',
    serviceId: REDIS.service,
    planId: REDIS.small,
    parameters: {},
    state: 'creating',
    username: 'u',
    createdAt: '2026-01-01T00:00:00.000Z',
    lastOperationId: 'op-b',
    secrets: { password: 'p', extra: {} },
  });
  await readyInstance(store, engine, 'failed', 'exited', true, { state: 'failed' });
  await reconciler.pass();
  t.deepEqual(engine.repairs, []);
  for (const id of ['busy', 'binding', 'failed']) t.is(await store.getHealth(id), undefined, id);
});

test('a start that fails is reported with its reason and tried again at the next pass', async (t) => {
  const { store, engine, reconciler } = setUp(t);
  await readyInstance(store, engine, 'a', 'exited');
  engine.failure = 'port 50000 is taken';
  await reconciler.pass();
  const down = (await store.getHealth('a'))!;
  t.like(down, { state: 'down', since: '2026-01-01T00:10:00Z' });
  t.is(down.reason, 'container exited with code 137 (killed); starting it again failed: port 50000 is taken');
  engine.failure = undefined;
  await reconciler.pass();
  t.like(await store.getHealth('a'), { state: 'repaired', since: '2026-01-01T00:10:00Z' });
  t.like(reconciler.snapshot().drift, { detected: 1, repairFailed: 1, restarted: 1 });
});

test('the health record goes with the deleted instance', async (t) => {
  const { store, engine, reconciler } = setUp(t);
  const instance = await readyInstance(store, engine, 'a', undefined, false);
  await reconciler.pass();
  t.truthy(await store.getHealth('a'));
  await store.putInstance({ ...instance, state: 'deleted' });
  t.is(await store.getHealth('a'), undefined);
  await reconciler.pass();
  t.is(await store.getHealth('a'), undefined);
  t.deepEqual(reconciler.snapshot().instances, { running: 0, down: 0, repaired: 0 });
});

test('an engine event brings the instance back without waiting for a pass', async (t) => {
  const { store, engine, reconciler } = setUp(t);
  await readyInstance(store, engine, 'a', 'running');
  reconciler.start();
  await delay(100);
  engine.containers.set('c-a', summary('c-a', 'exited', { exitCode: 137 }));
  engine.emit({ instanceId: 'a', action: 'die' });
  const deadline = Date.now() + 5_000;
  while (!engine.repairs.length && Date.now() < deadline) await delay(20);
  t.deepEqual(engine.repairs, [{ step: 'restart', instanceId: 'a' }]);
});

test('two processes sharing one store repair once', async (t) => {
  const store = new MemoryStore();
  const engine = new FakeEngine();
  engine.restartMs = 300;
  const first = setUp(t, store, engine).reconciler;
  const second = setUp(t, store, engine).reconciler;
  await readyInstance(store, engine, 'a', 'exited');
  await Promise.all([first.pass(), second.pass(), first.check('a'), second.check('a')]);
  t.is(engine.repairs.length, 1);
  t.like(await store.getHealth('a'), { state: 'repaired' });
  t.is(first.snapshot().drift.restarted + second.snapshot().drift.restarted, 1);
});
