// Scheduled backups and the retention of deleted instances' backups, against the real engine and Redis offering.
// Two broker processes of one BROKER_ID on one Redis (replicas) share a schedule of every 10 seconds: each run is made
// once, a run whose container is stopped fails visibly and the next one succeeds, and with one replica killed the
// other goes on alone. Then, in one in-process broker, a deleted instance's backups stay restorable until retention
// lets them go. Port blocks 42 (replicas: 45200-45299) and 46 (45600-45699).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { Config } from '../src/config.js';
import { removeEverything, startTestBroker, startTestRedis, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody, type OsbClient } from './helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir, type SpawnedBroker } from './helpers/spawn-broker.js';
import { storedRecord, waitUntil } from './helpers/wait.js';

const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const MEMCACHED = { service: '97fa3eaf-8e67-4001-af44-0f4f8921ff48' };
const EVERY_TEN_SECONDS = '*/10 * * * * *';
const cleanups: Array<() => Promise<void> | void> = [];

test.after.always(async () => {
  await killAllBrokers();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

const brokerApi = (client: OsbClient, method: string, path: string, body?: unknown) => client.request(method, path, body, { version: null });
const listBackups = (client: OsbClient, id: string) => brokerApi(client, 'GET', `/broker/v1/instances/${id}/backups`);

async function provisionReady(client: OsbClient, id: string, extra: Record<string, unknown> = {}) {
  const accepted = await client.provision(id, provisionBody(REDIS.service, REDIS.small, extra));
  if (accepted.status !== 202) throw new Error(`provision: ${accepted.status} ${JSON.stringify(accepted.body)}`);
  return client.waitForInstance(id, accepted.body.operation);
}

/** The scheduled runs the replicas started, from their logs: run time and backup id. */
function scheduledRuns(replicas: SpawnedBroker[]): Array<{ scheduledFor: string; backup: string }> {
  return replicas
    .flatMap((replica) => replica.logs())
    .filter((record) => record.msg === 'scheduled backup started')
    .map((record) => ({ scheduledFor: record.scheduledFor as string, backup: record.backup as string }))
    .sort((a, b) => a.scheduledFor.localeCompare(b.scheduledFor));
}

/** Each run time once, and consecutive ones 10 s apart: no run missed, none made twice. */
function assertOnePerTick(t: { is(actual: unknown, expected: unknown, message?: string): void }, runs: Array<{ scheduledFor: string }>) {
  const times = runs.map((run) => Date.parse(run.scheduledFor));
  t.is(new Set(times).size, times.length, `a run made twice: ${JSON.stringify(runs)}`);
  for (let index = 1; index < times.length; index++) t.is(times[index]! - times[index - 1]!, 10_000, `a run missed: ${JSON.stringify(runs)}`);
}

test.serial(
  'two replicas, one schedule: one backup per tick; a failed run is visible and the next succeeds; one replica killed, the other goes on',
  async (t) => {
    const redis = await startTestRedis();
    cleanups.push(() => redis.stop());
    const state = tempStateDir();
    const backupDir = mkdtempSync(path.join(tmpdir(), 'osb-scheduled-backups-'));
    cleanups.push(
      () => state.remove(),
      () => rmSync(backupDir, { recursive: true, force: true }),
    );
    const brokerId = `s${randomBytes(4).toString('hex')}`;
    cleanups.push(() => removeEverything(brokerId));
    const env = {
      BROKER_PASSWORD: 'schedule-password',
      BROKER_ENCRYPTION_KEY: hexKey(),
      REDIS_URL: redis.url,
      BROKER_ID: brokerId,
      BROKER_PORT_RANGE: '45200-45299',
      BROKER_STATE_DIR: state.dir,
      BROKER_BACKUP_DIR: backupDir,
      BROKER_LEASE_SECONDS: '3',
      BROKER_SWEEP_SECONDS: '1',
      // No repairs: the stopped container stays stopped until the test starts it.
      BROKER_RECONCILE_SECONDS: '0',
      LOG_LEVEL: 'info',
    };
    const replicas = [await spawnBroker({ ...env, PORT: String(await freePort()) }), await spawnBroker({ ...env, PORT: String(await freePort()) })];
    const client = replicas[0]!.client;
    const id = uniqueId('sched');
    t.is((await provisionReady(client, id, { parameters: { backup_schedule: EVERY_TEN_SECONDS } })).body.state, 'succeeded');

    // Three ticks: three scheduled backups, all succeeded, one per run time, made by whichever replica claimed it.
    const finished = (minimum: number, after = '') =>
      waitUntil(
        `${minimum} finished scheduled backups`,
        async () => {
          const { body } = await listBackups(client, id);
          const ended = body.backups.filter((backup: any) => backup.origin === 'scheduled' && backup.state !== 'in progress' && backup.created > after);
          return ended.length >= minimum ? body : undefined;
        },
        90_000,
        250,
      );
    const first = await finished(3);
    const scheduled = first.backups.filter((backup: any) => backup.origin === 'scheduled');
    t.true(
      scheduled.every((backup: any) => backup.state === 'succeeded'),
      JSON.stringify(scheduled),
    );
    t.like(first.schedule, { cron: EVERY_TEN_SECONDS, source: 'instance', last_failure: null });
    t.true(Date.parse(first.schedule.next) > Date.now() - 1000 && Date.parse(first.schedule.next) % 10_000 === 0);
    t.is(
      first.schedule.last_success,
      scheduled
        .map((backup: any) => backup.finished)
        .sort()
        .at(-1),
    );
    const runs = scheduledRuns(replicas);
    assertOnePerTick(t, runs);
    for (const backup of scheduled) t.is(runs.filter((run) => run.backup === backup.id).length, 1);

    // Either replica's metrics show the instance's last success (kept in Redis, whoever made it); the replicas' counts add up.
    const scrapes = await Promise.all(
      replicas.map((replica) => fetch(`${replica.url}/metrics`, { headers: { Authorization: client.basic } }).then((response) => response.text())),
    );
    for (const metrics of scrapes) {
      const gauge = new RegExp(`^osb_backup_last_success_timestamp_seconds\\{instance_id="${id}",service="redis"\\} (\\d+)$`, 'm').exec(metrics);
      t.true(Number(gauge?.[1]) * 1000 >= Date.parse(first.schedule.last_success) - 1000, metrics);
    }
    const succeededCount = scrapes
      .map((metrics) => Number(/^osb_backups_finished_total\{origin="scheduled",outcome="succeeded"\} (\d+)$/m.exec(metrics)?.[1]))
      .reduce((sum, count) => sum + count, 0);
    t.true(succeededCount >= 3, `scheduled successes counted: ${succeededCount}`);

    // The container stopped: the next run fails with a description, the list shows it as last_failure.
    const { containerName } = (await storedRecord(redis.url, brokerId, 'instance', id))!;
    const stoppedAt = new Date().toISOString();
    execFileSync('docker', ['stop', '-t', '1', containerName], { stdio: 'ignore' });
    const failedList = await waitUntil(
      'a failed scheduled backup',
      async () => {
        const { body } = await listBackups(client, id);
        return body.backups.some((backup: any) => backup.origin === 'scheduled' && backup.state === 'failed' && backup.created > stoppedAt) ? body : undefined;
      },
      60_000,
      250,
    );
    const failed = failedList.backups.find((backup: any) => backup.state === 'failed');
    t.regex(failed.description, /^Backup failed: .+/);
    t.deepEqual(failedList.schedule.last_failure, { at: failed.finished, description: failed.description });

    // Started again: a later run succeeds.
    execFileSync('docker', ['start', containerName], { stdio: 'ignore' });
    const restartedAt = new Date().toISOString();
    await waitUntil(
      'a succeeded scheduled backup after the restart',
      async () => {
        const { body } = await listBackups(client, id);
        return body.backups.some((backup: any) => backup.origin === 'scheduled' && backup.state === 'succeeded' && backup.created > restartedAt) || undefined;
      },
      90_000,
      250,
    );

    // Kill -9 the replica that started a run just now (the next is 10 s away); the other makes every later run, once each.
    const runsSoFar = scheduledRuns(replicas).length;
    const latest = await waitUntil('the next run', async () => scheduledRuns(replicas).length > runsSoFar && scheduledRuns(replicas).at(-1), 30_000, 20);
    const victim = replicas.find((replica) => scheduledRuns([replica]).some((run) => run.backup === latest.backup))!;
    const survivor = replicas.find((replica) => replica !== victim)!;
    await victim.kill('SIGKILL');
    const killedAt = new Date().toISOString();
    const afterKill = await waitUntil(
      'three scheduled backups after the kill',
      async () => {
        const { body } = await listBackups(survivor.client, id);
        const ended = body.backups.filter((backup: any) => backup.origin === 'scheduled' && backup.state !== 'in progress' && backup.created > killedAt);
        return ended.length >= 3 ? ended : undefined;
      },
      90_000,
      250,
    );
    t.true(
      afterKill.every((backup: any) => backup.state === 'succeeded'),
      JSON.stringify(afterKill),
    );
    const allRuns = scheduledRuns(replicas);
    assertOnePerTick(t, allRuns);
    const survivorRuns = new Set(scheduledRuns([survivor]).map((run) => run.backup));
    t.true(afterKill.every((backup: any) => survivorRuns.has(backup.id)));
    // Every scheduled backup in the list is one logged run, and no run made two backups.
    const { body: end } = await listBackups(survivor.client, id);
    const listedScheduled = end.backups.filter((backup: any) => backup.origin === 'scheduled').map((backup: any) => backup.id);
    t.true(listedScheduled.every((backupId: string) => allRuns.filter((run) => run.backup === backupId).length === 1));
    await survivor.kill('SIGTERM');
  },
);

let local: TestBroker;
let localDir: string;

test.serial("a deleted instance's backups stay restorable until retention lets them go, then records and objects are removed", async (t) => {
  localDir = mkdtempSync(path.join(tmpdir(), 'osb-deleted-backups-'));
  local = await startTestBroker(46, {
    backup: { store: { kind: 'local', dir: localDir }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 1 }, deletedPassSeconds: 1 },
  } as Partial<Config>);
  cleanups.push(
    () => local.stop(),
    () => rmSync(localDir, { recursive: true, force: true }),
  );
  const { client } = local;

  // backup_schedule is checked at provision and update.
  const bad = await client.provision(uniqueId('bad'), provisionBody(REDIS.service, REDIS.small, { parameters: { backup_schedule: 'every night' } }));
  t.is(bad.status, 400);
  t.regex(bad.body.description, /^backup_schedule: "every night" is not a cron expression of 5 or 6 fields/);
  const cache = await client.provision(uniqueId('bad'), {
    ...provisionBody(MEMCACHED.service, 'ignored', { parameters: { backup_schedule: '0 3 * * *' } }),
    plan_id: (await client.request('GET', '/v2/catalog')).body.services.find((service: any) => service.id === MEMCACHED.service).plans[0].id,
  });
  t.is(cache.status, 400);
  t.regex(cache.body.description, /backup_schedule: memcached instances have no backups/);

  const source = uniqueId('gone');
  t.is((await provisionReady(client, source, { parameters: { backup_schedule: '0 3 * * *' } })).body.state, 'succeeded');
  t.like((await listBackups(client, source)).body.schedule, { cron: '0 3 * * *', source: 'instance', last_success: null });
  const update = (backup_schedule: unknown) =>
    client.request('PATCH', `/v2/service_instances/${source}?accepts_incomplete=true`, { service_id: REDIS.service, parameters: { backup_schedule } });
  t.is((await update('0 0 31 2 *')).status, 400);
  t.is((await update('off')).status, 200);
  t.like((await listBackups(client, source)).body.schedule, { cron: null, source: 'off', next: null });
  t.is((await update(null)).status, 200);
  t.like((await listBackups(client, source)).body.schedule, { source: 'off' });

  // Data in, backed up on demand (origin manual), instance deleted.
  const binding = await client.bind(source, uniqueId('b'), { service_id: REDIS.service, plan_id: REDIS.small });
  const writer = new Redis(binding.body.credentials.uri as string, { maxRetriesPerRequest: 1 });
  await writer.set('kept', 'after the delete');
  writer.disconnect();
  const started = await brokerApi(client, 'POST', `/broker/v1/instances/${source}/backups`);
  t.is(started.status, 202);
  const made = await waitUntil('the backup to end', async () => {
    const backup = (await listBackups(client, source)).body.backups.find((candidate: any) => candidate.id === started.body.id);
    return backup?.state !== 'in progress' && backup;
  });
  t.like(made, { state: 'succeeded', origin: 'manual' });
  const gone = await client.deprovision(source, REDIS.service, REDIS.small);
  t.is((await client.waitForInstance(source, gone.body.operation)).body.state, 'succeeded');

  // Passes run (every second) and keep them: the instance was deleted less than a day ago.
  const passes = () => local.logs.filter((line) => line.includes('pass over the backups of deleted instances done')).length;
  const before = passes();
  await waitUntil('two passes after the delete', async () => passes() >= before + 2);
  t.is((await listBackups(client, source)).body.backups.length, 1);

  // restore_from the deleted instance works in between, data and all.
  const restored = uniqueId('back');
  t.is((await provisionReady(client, restored, { parameters: { restore_from: { instance: source, backup: 'latest' } } })).body.state, 'succeeded');
  const reading = await client.bind(restored, uniqueId('b'), { service_id: REDIS.service, plan_id: REDIS.small });
  const reader = new Redis(reading.body.credentials.uri as string, { maxRetriesPerRequest: 1 });
  t.is(await reader.get('kept'), 'after the delete');
  reader.disconnect();

  // Two days on, the pass removes the records and the objects in the store; restore_from is refused from then on.
  const objects = path.join(localDir, source);
  t.is(readdirSync(objects).length, 1);
  t.is(await local.broker.backupSchedules.deletedPass(new Date(Date.now() + 2 * 86_400_000)), 1);
  t.deepEqual((await listBackups(client, source)).body.backups ?? [], []);
  t.true(!existsSync(objects) || readdirSync(objects).length === 0);
  const refused = await client.provision(
    uniqueId('late'),
    provisionBody(REDIS.service, REDIS.small, { parameters: { restore_from: { instance: source, backup: 'latest' } } }),
  );
  t.is(refused.status, 400);
  // The restored instance's own backups are untouched by the pass.
  t.is((await listBackups(client, restored)).status, 200);
});
