import test from 'ava';
import path from 'node:path';
import { reserveNewExtraPorts } from '../../src/broker/host-ports.js';
import { publishedExtraPorts } from '../../src/broker/runtime.js';
import { loadCatalog } from '../../src/catalog/load.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import type { InstanceRecord, OperationRecord } from '../../src/store/records.js';
import { MemoryStore } from '../helpers/memory-store.js';

// A maintenance upgrade that adds ports (RabbitMQ gained amqps and management_tls): the instance keeps the ports it has
// and gets host ports for the new ones before its new container is made.
const rabbitmq = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/').find((definition) => definition.offering.name === 'rabbitmq')!;
const range = { first: 50000, last: 50009 };
const free = async () => true;

function setUp(operationId = 'op-1') {
  const store = new MemoryStore();
  const instance = {
    id: 'i-1',
    serviceId: rabbitmq.offering.id,
    planId: rabbitmq.offering.plans[0]!.id,
    state: 'ready',
    lastOperationId: operationId,
    hostPort: 50000,
    extraHostPorts: { management: 50001 },
  } as unknown as InstanceRecord;
  store.instances.set(instance.id, instance);
  const operation = { id: operationId, type: 'update', instanceId: instance.id } as OperationRecord;
  return { store, instance, operation };
}

test('an upgrade that adds extra ports reserves and records one host port for each new one, keeping the old ones', async (t) => {
  const { store, instance, operation } = setUp();
  await store.reservePort(instance.id, range, free);
  await store.reservePort(instance.id, range, free);
  const newNames = Object.keys(rabbitmq.container.extraPorts).filter((name) => name !== 'management');
  t.true(newNames.length > 0, 'the catalog has ports the old instance lacks');

  const upgraded = await reserveNewExtraPorts(store, { portRange: range }, free, rabbitmq, instance, operation);
  t.is(upgraded.hostPort, 50000);
  t.is(upgraded.extraHostPorts!.management, 50001);
  const added = newNames.map((name) => upgraded.extraHostPorts![name]);
  t.deepEqual(
    added,
    newNames.map((_, index) => 50002 + index),
  );
  t.deepEqual((await store.getInstance(instance.id))!.extraHostPorts, upgraded.extraHostPorts, 'recorded');
  t.is(await reserveNewExtraPorts(store, { portRange: range }, free, rabbitmq, upgraded, operation), upgraded, 'nothing new: unchanged');
});

test('no port left: the upgrade fails naming the port and gives back what it had reserved', async (t) => {
  const { store, instance, operation } = setUp();
  const tight = { first: 50000, last: 50002 };
  await store.reservePort(instance.id, tight, free);
  await store.reservePort(instance.id, tight, free);
  await t.throwsAsync(reserveNewExtraPorts(store, { portRange: tight }, free, rabbitmq, instance, operation), {
    message: /no free host port left .* for the new \S+ port/,
  });
  t.deepEqual([...store.ports.keys()].sort(), ['50000', '50001']);
  t.deepEqual((await store.getInstance(instance.id))!.extraHostPorts, { management: 50001 });
});

test('another operation took the instance over: the new ports go back', async (t) => {
  const { store, instance, operation } = setUp('op-2');
  await store.reservePort(instance.id, range, free);
  await store.reservePort(instance.id, range, free);
  await t.throwsAsync(reserveNewExtraPorts(store, { portRange: range }, free, rabbitmq, instance, { ...operation, id: 'op-1' }), {
    message: /another operation took over/,
  });
  t.deepEqual([...store.ports.keys()].sort(), ['50000', '50001']);
});

test('a container is published with the extra ports its instance has host ports for; one gained later waits for the upgrade', (t) => {
  const names = (extraHostPorts?: Record<string, number>) => publishedExtraPorts(rabbitmq, { extraHostPorts }).map(([name]) => name);
  t.deepEqual(names({ management: 50001 }), ['management']);
  t.deepEqual(
    names(Object.fromEntries(Object.keys(rabbitmq.container.extraPorts).map((name, index) => [name, 50001 + index]))),
    Object.keys(rabbitmq.container.extraPorts),
  );
  t.deepEqual(names(undefined), []);
});
