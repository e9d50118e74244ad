import test from 'ava';
import type { ServiceDefinition } from '../../src/catalog/definition.js';
import { Offerings } from '../../src/broker/offerings.js';
import { UsageSampler, type UsageSamplerStore } from '../../src/broker/usage-sampler.js';
import { usageHistory } from '../../src/broker/usage-series.js';
import type { InstanceContainers } from '../../src/broker/contracts.js';
import type { DockerEngine } from '../../src/docker/engine.js';
import { createLogger } from '../../src/log.js';
import type { InstanceRecord } from '../../src/store/records.js';
import type { DiskSample, UsageSample } from '../../src/store/usage-history.js';

// The sampler's rules with stand-ins for the store and the engine (the real ones are in test/usage-history.test.ts):
// one replica samples, one instance's failure spares the others, an engine away is logged once; and the history's
// rates, gaps and restarts.

const definition = { offering: { id: 'svc', plans: [] }, container: { dataPath: '/data', execUser: 'app' } } as unknown as ServiceDefinition;
const instance = (id: string): InstanceRecord => ({ id, serviceId: 'svc', planId: 'plan', state: 'ready' }) as unknown as InstanceRecord;
const counters = { cpuNanos: 1e9, memoryBytes: 1, memoryLimitBytes: 2, networkRxBytes: 3, networkTxBytes: 4, blockReadBytes: 5, blockWriteBytes: 6 };

/** One Redis for every replica: the lease and the lists. */
function sharedStore(instances: InstanceRecord[]) {
  const lease = { holder: '', until: 0 };
  const samples = new Map<string, UsageSample[]>();
  const disks = new Map<string, DiskSample[]>();
  const store: UsageSamplerStore & { away: boolean } = {
    away: false,
    async listInstances() {
      if (store.away) throw new Error('the state store (Redis) did not answer');
      return instances;
    },
    async claimLease(_name, owner, ttlMs) {
      if (lease.holder && lease.holder !== owner && lease.until > Date.now()) return false;
      Object.assign(lease, { holder: owner, until: Date.now() + ttlMs });
      return true;
    },
    usage: {
      async pushSample(id, sample) {
        samples.set(id, [...(samples.get(id) ?? []), sample]);
        return true;
      },
      async pushDisk(id, sample) {
        disks.set(id, [...(disks.get(id) ?? []), sample]);
        return true;
      },
    },
  };
  return { store, samples, disks, lease };
}

function engineWith(behaviour: (container: string) => Promise<typeof counters | undefined>) {
  const engine = {
    usageCounters: behaviour,
    exec: async () => ({ exitCode: 0, stdout: '4096\t/data\n', stderr: '' }),
  } as unknown as DockerEngine;
  const containers: InstanceContainers = { inspect: async () => undefined, locate: async (record) => ({ engine, container: record.id }) };
  return containers;
}

function sampler(store: UsageSamplerStore, containers: InstanceContainers, owner: string, logs: string[]) {
  const log = createLogger('info', {}, { write: (line: string) => void logs.push(line) });
  return new UsageSampler({
    store,
    containers,
    offerings: new Offerings([definition]),
    log,
    owner,
    settings: { usageSampleSeconds: 10, usageDiskSeconds: 60, usageKeepSeconds: 3600 },
  });
}

test('two replicas: only the lease holder samples; one failing instance spares the others', async (t) => {
  const { store, samples, disks } = sharedStore([instance('a'), instance('b'), instance('c')]);
  const containers = engineWith(async (container) => {
    if (container === 'b') throw Object.assign(new Error('no such container'), { statusCode: 404 });
    return counters;
  });
  const logs: string[] = [];
  const first = sampler(store, containers, 'replica-1', logs);
  const second = sampler(store, containers, 'replica-2', logs);
  await first.pass();
  await second.pass();
  await first.pass();
  t.is(samples.get('a')?.length, 2, 'two passes of the holder, none of the other replica');
  t.is(samples.get('c')?.length, 2);
  t.false(samples.has('b'));
  t.is(disks.get('a')?.length, 1, 'the disk once a minute, not at every sample');
  t.is(disks.get('a')?.[0]?.usedBytes, 4096);
  t.is(logs.filter((line) => line.includes('could not sample')).length, 1, 'the failing instance is logged once');
});

test('an engine away and a store away are each logged once, and once when they are back', async (t) => {
  const { store, samples } = sharedStore([instance('a'), instance('b')]);
  let engineUp = false;
  const containers = engineWith(async () => {
    if (!engineUp) throw Object.assign(new Error('connect ECONNREFUSED /var/run/docker.sock'), { code: 'ECONNREFUSED' });
    return counters;
  });
  const logs: string[] = [];
  const replica = sampler(store, containers, 'replica-1', logs);
  for (let pass = 0; pass < 3; pass++) await replica.pass();
  engineUp = true;
  await replica.pass();
  store.away = true;
  for (let pass = 0; pass < 3; pass++) await replica.pass();
  store.away = false;
  await replica.pass();
  const count = (text: string) => logs.filter((line) => line.includes(text)).length;
  t.is(count('the Docker engine does not answer'), 1);
  t.is(count('the Docker engine answers again'), 1);
  t.is(count('the state store does not answer'), 1);
  t.is(count('the state store answers again'), 1);
  t.is(count('could not sample'), 0);
  t.is(samples.get('a')?.length, 2);
});

test('history: rates per second, null after a gap and after a restart, the disk against disk_mb', (t) => {
  const at = (seconds: number, cpuSeconds: number, rx: number): UsageSample => ({
    ...counters,
    at: seconds * 1000,
    cpuNanos: cpuSeconds * 1e9,
    networkRxBytes: rx,
  });
  const samples = [at(1000, 10, 0), at(1010, 15, 10_240), at(1100, 20, 20_480), at(1110, 1, 0), at(1120, 2, 1024)];
  const history = usageHistory(samples, [{ at: 1_100_000, usedBytes: 300 * 1024 * 1024 }], {
    sampleSeconds: 10,
    keepSeconds: 3600,
    diskMb: 256,
    now: 1_121_000,
  });
  t.deepEqual(history.time, [1000, 1010, 1100, 1110, 1120]);
  t.deepEqual(history.cpuPercent, [null, 50, null, null, 10], 'half a CPU; null after 90 s without samples and after the totals restart');
  t.deepEqual(history.networkRxBytesPerSecond, [null, 1024, null, null, 102.4]);
  t.is(history.lastSampleAt, new Date(1_120_000).toISOString());
  t.deepEqual(history.diskStatus, { usedBytes: 300 * 1024 * 1024, limitBytes: 256 * 1024 * 1024, over: true, measuredAt: new Date(1_100_000).toISOString() });
  const old = usageHistory(samples, [], { sampleSeconds: 10, keepSeconds: 60, now: 1_121_000 });
  t.deepEqual(old.time, [1100, 1110, 1120], 'only the kept time');
  t.is(old.diskStatus, undefined);
});
