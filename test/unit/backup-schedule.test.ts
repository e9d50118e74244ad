import test from 'ava';
import path from 'node:path';
import { dueRun, latestRunAtOrBefore, nextRunAfter, parseBackupCron } from '../../src/backups/cron.js';
import { loadBackupConfig } from '../../src/backups/config.js';
import { BackupScheduler, backupScheduleParameter, effectiveSchedule, type ScheduleStore } from '../../src/broker/backup-schedule.js';
import type { BackupObserver } from '../../src/broker/contracts.js';
import { Offerings } from '../../src/broker/offerings.js';
import { loadCatalog } from '../../src/catalog/load.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import type { BackupRecord, BackupScheduleMark, InstanceRecord } from '../../src/store/records.js';
import { waitUntil } from '../helpers/wait.js';

// Backup schedules without Redis or an engine: the cron rules (next run, the one catch-up), the parameter's checks,
// and the scheduler with an in-memory store that claims runs as the Redis script does, shared by two "replicas".
const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/');
const offerings = new Offerings(definitions);
const definition = (name: string) => definitions.find((candidate) => candidate.offering.name === name)!;
const REDIS = definition('redis');
const at = (iso: string) => new Date(iso);

test('a 6-field expression runs every N seconds, a 5-field one on the minute, both in UTC', (t) => {
  const everyTen = parseBackupCron('*/10 * * * * *');
  t.deepEqual(nextRunAfter(everyTen, at('2024-01-01T00:00:25.500Z')), at('2024-01-01T00:00:30Z'));
  t.deepEqual(latestRunAtOrBefore(everyTen, at('2024-01-01T00:00:20Z')), at('2024-01-01T00:00:20Z'));
  const nightly = parseBackupCron('0 3 * * *');
  t.deepEqual(nextRunAfter(nightly, at('2024-01-01T04:00:00Z')), at('2024-01-02T03:00:00Z'));
});

test('expressions that are not cron, or never come due, are refused with the reason', (t) => {
  t.throws(() => parseBackupCron('every day'), { message: /not a cron expression of 5 or 6 fields/ });
  t.throws(() => parseBackupCron('61 * * * *'), { message: /minute/ });
  t.throws(() => parseBackupCron('0 0 0 1 1 * 2020'), { message: /5 or 6/ });
  t.throws(() => parseBackupCron('0 0 31 2 *'), { message: /never comes due/ });
});

test('dueRun: nothing before the next run, the run itself once it is due, never the same run twice', (t) => {
  const cron = parseBackupCron('*/10 * * * * *');
  const handled = at('2024-01-01T00:00:10Z');
  t.is(dueRun(cron, handled, at('2024-01-01T00:00:19.999Z')), undefined);
  t.deepEqual(dueRun(cron, handled, at('2024-01-01T00:00:20Z')), at('2024-01-01T00:00:20Z'));
  t.deepEqual(dueRun(cron, handled, at('2024-01-01T00:00:24Z')), at('2024-01-01T00:00:20Z'));
  t.is(dueRun(cron, at('2024-01-01T00:00:20Z'), at('2024-01-01T00:00:24Z')), undefined);
});

test('dueRun: runs missed while every replica was down give one catch-up run, the latest', (t) => {
  const nightly = parseBackupCron('0 3 * * *');
  const down = at('2024-01-01T03:00:00Z');
  t.deepEqual(dueRun(nightly, down, at('2024-01-05T12:00:00Z')), at('2024-01-05T03:00:00Z'));
  // Once that one is claimed, nothing more is due until the next night.
  t.is(dueRun(nightly, at('2024-01-05T03:00:00Z'), at('2024-01-05T12:00:00Z')), undefined);
});

test('backup_schedule: a cron expression or "off"; null leaves it; anything else, or an offering without backups, is a 400', (t) => {
  t.is(backupScheduleParameter(' 0 3 * * * ', REDIS), '0 3 * * *');
  t.is(backupScheduleParameter('off', REDIS), 'off');
  t.is(backupScheduleParameter(null, REDIS), undefined);
  t.is(backupScheduleParameter(undefined, REDIS), undefined);
  t.throws(() => backupScheduleParameter('daily', REDIS), { message: /backup_schedule: "daily" is not a cron expression/ });
  t.throws(() => backupScheduleParameter(5, REDIS), { message: /must be a cron expression/ });
  t.throws(() => backupScheduleParameter('0 3 * * *', definition('memcached')), { message: /memcached instances have no backups/ });
});

test("an instance's own schedule wins over the broker's default, and off is off", (t) => {
  t.deepEqual(effectiveSchedule({ backupSchedule: '0 1 * * *' }, '0 2 * * *'), { cron: '0 1 * * *', source: 'instance' });
  t.deepEqual(effectiveSchedule({}, '0 2 * * *'), { cron: '0 2 * * *', source: 'broker' });
  t.deepEqual(effectiveSchedule({ backupSchedule: 'off' }, '0 2 * * *'), { cron: null, source: 'off' });
  t.deepEqual(effectiveSchedule({}, undefined), { cron: null, source: 'off' });
});

test('BROKER_BACKUP_SCHEDULE is checked at start', (t) => {
  t.is(loadBackupConfig({ BROKER_BACKUP_SCHEDULE: '0 4 * * *' }).schedule, '0 4 * * *');
  t.is(loadBackupConfig({ BROKER_BACKUP_SCHEDULE: 'off' }).schedule, undefined);
  t.is(loadBackupConfig({}).schedule, undefined);
  t.throws(() => loadBackupConfig({ BROKER_BACKUP_SCHEDULE: 'nightly' }), { message: /^BROKER_BACKUP_SCHEDULE: "nightly" is not a cron expression/ });
});

/** The state store's part the scheduler uses, in memory, with the claim rule of the Redis script. */
class FakeStore implements ScheduleStore {
  instances = new Map<string, InstanceRecord>();
  backups = new Map<string, BackupRecord[]>();
  marks = new Map<string, BackupScheduleMark>();
  orphaned = new Map<string, string>();
  claims: Array<{ instanceId: string; runMs: number }> = [];
  leases = new Map<string, string>();
  forgotten: string[] = [];
  lists = 0;

  async listInstances() {
    this.lists++;
    return [...this.instances.values()].filter((instance) => instance.state !== 'deleted');
  }
  async getInstance(id: string) {
    return this.instances.get(id);
  }
  async listBackups(instanceId: string) {
    return [...(this.backups.get(instanceId) ?? [])];
  }
  async getBackupSchedule(instanceId: string) {
    const mark = this.marks.get(instanceId);
    return mark && { ...mark };
  }
  async claimScheduledBackup(instanceId: string, cron: string, runMs: number) {
    const mark = this.marks.get(instanceId);
    if (mark?.cron === cron && runMs <= mark.lastRunMs) return false;
    this.marks.set(instanceId, { ...mark, cron, lastRunMs: runMs });
    this.claims.push({ instanceId, runMs });
    return true;
  }
  async putScheduledBackupFailure(instanceId: string, failure: { at: string; description: string }) {
    const mark = this.marks.get(instanceId) ?? { cron: '', lastRunMs: 0 };
    this.marks.set(instanceId, { ...mark, failure });
  }
  async setBackupLastSuccess() {}
  async instancesWithBackupState() {
    return [...new Set([...this.backups.keys(), ...this.marks.keys()])];
  }
  async markBackupsOrphaned(instanceId: string, when: string) {
    if (!this.orphaned.has(instanceId)) this.orphaned.set(instanceId, when);
    return this.orphaned.get(instanceId)!;
  }
  async forgetBackupState(instanceId: string) {
    this.forgotten.push(instanceId);
    this.marks.delete(instanceId);
    this.orphaned.delete(instanceId);
  }
  async claimLease(name: string, owner: string) {
    const holder = this.leases.get(name);
    if (holder && holder !== owner) return false;
    this.leases.set(name, owner);
    return true;
  }
}

function instance(id: string, backupSchedule?: string, state: InstanceRecord['state'] = 'ready'): InstanceRecord {
  return {
    id,
    serviceId: REDIS.offering.id,
    planId: REDIS.offering.plans[0]!.id,
    organizationGuid: 'org',
    spaceGuid: 'space',
    context: {},
    requestedParameters: {},
    parameters: {},
    maintenanceVersion: '7.0.0',
    state,
    containerName: `c-${id}`,
    volumeName: `v-${id}`,
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
    lastOperationId: 'op',
    backupSchedule,
    secrets: { adminPassword: 'x' },
  };
}

function backup(instanceId: string, id: string, state: BackupRecord['state'], createdAt: string, extra: Partial<BackupRecord> = {}): BackupRecord {
  return {
    id,
    instanceId,
    state,
    serviceId: REDIS.offering.id,
    planId: REDIS.offering.plans[0]!.id,
    organizationGuid: 'org',
    spaceGuid: 'space',
    maintenanceVersion: '7.0.0',
    storeKey: `${instanceId}/${id}.osb-backup`,
    createdAt,
    finishedAt: createdAt,
    ...extra,
  };
}

function scheduler(store: FakeStore, name: string, start: (instanceId: string) => Promise<void>, observed: string[] = [], defaultSchedule?: string) {
  const observer: BackupObserver = { backupEnded: (ended) => observed.push(`${ended.origin}:${ended.state}`) };
  const removed: string[] = [];
  const made = new BackupScheduler({
    store,
    backups: {
      start: async (instanceId: string) => {
        await start(instanceId);
        return backup(instanceId, `b${Date.now()}`, 'in progress', new Date().toISOString());
      },
      remove: async (instanceId: string, backupId: string) => {
        removed.push(backupId);
        store.backups.set(
          instanceId,
          (store.backups.get(instanceId) ?? []).filter((candidate) => candidate.id !== backupId),
        );
      },
    },
    offerings,
    log: createLogger('silent'),
    observer,
    owner: name,
    defaultSchedule,
    retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 1 },
    deletedPassMs: 3_600_000,
    refreshMs: 200,
  });
  return { scheduler: made, removed };
}

test('two replicas on one store: every run of a one-second schedule is claimed and started exactly once', async (t) => {
  const store = new FakeStore();
  store.instances.set('a', instance('a', '* * * * * *'));
  store.instances.set('unscheduled', instance('unscheduled'));
  store.instances.set('off', instance('off', 'off'));
  const starts: string[] = [];
  const replicas = [scheduler(store, 'one', async (id) => void starts.push(id)), scheduler(store, 'two', async (id) => void starts.push(id))];
  replicas.forEach(({ scheduler: each }) => each.start());
  t.teardown(() => Promise.all(replicas.map(({ scheduler: each }) => each.stop())));
  await waitUntil('three scheduled runs', async () => starts.length >= 3, 20_000);
  await Promise.all(replicas.map(({ scheduler: each }) => each.stop()));
  t.deepEqual([...new Set(starts)], ['a']);
  t.is(starts.length, store.claims.length);
  const runs = store.claims.map((claim) => claim.runMs);
  t.is(new Set(runs).size, runs.length, 'no run claimed twice');
  t.true(runs.every((runMs) => runMs % 1000 === 0));
});

test('after an outage the missed runs give one catch-up run, not one per missed run', async (t) => {
  const store = new FakeStore();
  store.instances.set('a', instance('a', '0 3 * * *'));
  store.marks.set('a', { cron: '0 3 * * *', lastRunMs: Date.now() - 5 * 86_400_000 });
  const starts: string[] = [];
  const { scheduler: made } = scheduler(store, 'one', async (id) => void starts.push(id));
  made.start();
  t.teardown(() => made.stop());
  await waitUntil('the catch-up run', async () => starts.length >= 1);
  // Several more reads of the instance list go by (every 200 ms); none starts another run.
  const listed = store.lists;
  await waitUntil('three more refreshes', async () => store.lists >= listed + 3, 10_000);
  await made.stop();
  t.is(starts.length, 1);
  t.is(store.claims.length, 1);
  t.is(store.claims[0]!.runMs, latestRunAtOrBefore(parseBackupCron('0 3 * * *'), new Date())!.getTime());
});

test('a run that cannot start is recorded as a failure, and the next run is made all the same', async (t) => {
  const store = new FakeStore();
  store.instances.set('a', instance('a', '* * * * * *'));
  let attempts = 0;
  const observed: string[] = [];
  const { scheduler: made } = scheduler(
    store,
    'one',
    async () => {
      attempts++;
      if (attempts === 1) throw new Error('The instance is busy (update in progress)');
    },
    observed,
  );
  made.start();
  t.teardown(() => made.stop());
  await waitUntil('a second attempt', async () => attempts >= 2, 20_000);
  await made.stop();
  t.regex(store.marks.get('a')!.failure!.description, /^Scheduled backup of .* could not start: The instance is busy \(update in progress\)$/);
  t.is(observed[0], 'scheduled:failed');
  const view = await made.describe('a', []);
  t.is(view.source, 'instance');
  t.is(view.cron, '* * * * * *');
  t.truthy(view.next);
  t.is(view.last_failure?.description, store.marks.get('a')!.failure!.description);
});

test('describe: last success of any origin, last failure the newest of failed scheduled backups and runs that could not start', async (t) => {
  const store = new FakeStore();
  store.instances.set('a', instance('a'));
  store.marks.set('a', { cron: '0 3 * * *', lastRunMs: 0, failure: { at: '2024-01-02T03:00:00.000Z', description: 'could not start' } });
  const records = [
    backup('a', 'b3', 'failed', '2024-01-03T03:00:00.000Z', { origin: 'scheduled', description: 'Backup failed: the script failed' }),
    backup('a', 'b2', 'succeeded', '2024-01-02T12:00:00.000Z', { origin: 'manual' }),
    backup('a', 'b1', 'failed', '2024-01-01T12:00:00.000Z', { origin: 'manual', description: 'on demand' }),
  ];
  const { scheduler: made } = scheduler(store, 'one', async () => {}, [], '0 3 * * *');
  const view = await made.describe('a', records, at('2024-01-03T04:00:00Z'));
  t.deepEqual(view, {
    cron: '0 3 * * *',
    source: 'broker',
    next: '2024-01-04T03:00:00.000Z',
    last_success: '2024-01-02T12:00:00.000Z',
    last_failure: { at: '2024-01-03T03:00:00.000Z', description: 'Backup failed: the script failed' },
  });
  store.instances.set('a', instance('a', undefined, 'deleted'));
  t.like(await made.describe('a', records), { cron: null, source: 'off', next: null });
});

test("deleted instances' backups are kept BROKER_BACKUP_KEEP_DELETED_DAYS, then all go, and their marks with them", async (t) => {
  const store = new FakeStore();
  const deletedAt = new Date(Date.now() - 3_600_000).toISOString();
  store.instances.set('gone', { ...instance('gone', '0 3 * * *', 'deleted'), updatedAt: deletedAt });
  store.instances.set('live', instance('live'));
  const created = new Date(Date.now() - 7_200_000).toISOString();
  store.backups.set('gone', [backup('gone', 'g1', 'succeeded', created), backup('gone', 'g2', 'failed', created)]);
  store.backups.set('live', [backup('live', 'l1', 'succeeded', created)]);
  store.backups.set('vanished', [backup('vanished', 'v1', 'succeeded', created)]); // its tombstone expired too
  store.marks.set('gone', { cron: '0 3 * * *', lastRunMs: 0 });
  const { scheduler: made, removed } = scheduler(store, 'one', async () => {});

  t.is(await made.deletedPass(), 0);
  t.is(store.orphaned.get('gone'), deletedAt);
  t.truthy(store.orphaned.get('vanished'));
  t.is(store.backups.get('gone')!.length, 2);

  t.is(await made.deletedPass(new Date(Date.now() + 2 * 86_400_000)), 3);
  t.deepEqual(removed.sort(), ['g1', 'g2', 'v1']);
  t.deepEqual(store.backups.get('live')!.length, 1);
  t.deepEqual(store.forgotten.sort(), ['gone', 'vanished']);
  t.false(store.marks.has('gone'));
});
