import { backupsToDelete, type RetentionSettings } from '../backups/index.js';
import { dueRun, nextRunAfter, parseBackupCron, type BackupCron } from '../backups/cron.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { Logger } from '../log.js';
import { badRequest } from '../osb/errors.js';
import type { BackupRecord, BackupScheduleMark, InstanceRecord } from '../store/records.js';
import type { BackupService } from './backups.js';
import type { BackupObserver } from './contracts.js';
import type { Offerings } from './offerings.js';
import { reasonOf } from './operations.js';
import { PeriodicPass } from './periodic-pass.js';

/** What schedules and the deleted-instance pass need of the state store (the Redis store has it). */
export interface ScheduleStore {
  listInstances(): Promise<InstanceRecord[]>;
  getInstance(id: string): Promise<InstanceRecord | undefined>;
  listBackups(instanceId: string): Promise<BackupRecord[]>;
  getBackupSchedule(instanceId: string): Promise<BackupScheduleMark | undefined>;
  claimScheduledBackup(instanceId: string, cron: string, runMs: number): Promise<boolean>;
  putScheduledBackupFailure(instanceId: string, failure: { at: string; description: string }): Promise<void>;
  setBackupLastSuccess(instanceId: string, seconds: number): Promise<void>;
  instancesWithBackupState(): Promise<string[]>;
  markBackupsOrphaned(instanceId: string, at: string): Promise<string>;
  forgetBackupState(instanceId: string): Promise<void>;
  claimLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
}

export interface SchedulerParts {
  store: ScheduleStore;
  backups: Pick<BackupService, 'start' | 'remove'>;
  offerings: Offerings;
  log: Logger;
  /** Told of scheduled runs that could not even start (the metrics). */
  observer: BackupObserver;
  /** This process, as the holder of the deleted-instance pass's lease. */
  owner: string;
  /** BROKER_BACKUP_SCHEDULE: the schedule of instances that set none. */
  defaultSchedule?: string;
  retention: RetentionSettings;
  /** How often the pass over deleted instances' backups runs (once across replicas). */
  deletedPassMs: number;
  /** How often the instance list is read again, to see new, changed and removed schedules. */
  refreshMs?: number;
}

/** An instance's schedule as the list answer shows it (the API contract's `schedule`). */
export interface ScheduleView {
  cron: string | null;
  source: 'instance' | 'broker' | 'off';
  next: string | null;
  last_success: string | null;
  last_failure: { at: string; description: string } | null;
}

/** One scheduled instance as this process plans it. */
interface Planned {
  instanceId: string;
  serviceId: string;
  expression: string;
  cron: BackupCron;
  /** The last run time handled (claimed here or elsewhere), or when this process first saw the schedule. */
  handled: Date;
  next: Date | null;
}

/**
 * Checks a provision or update's backup_schedule: a cron expression of 5 or 6 fields, or "off"; undefined when absent
 * or null (an update then leaves the instance's schedule as it is). Only offerings with backups take it.
 */
export function backupScheduleParameter(value: unknown, definition: ServiceDefinition): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (!definition.backups.supported) throw badRequest(`backup_schedule: ${definition.offering.name} instances have no backups.`);
  if (typeof value !== 'string') throw badRequest('backup_schedule must be a cron expression (5 fields, or 6 with seconds first) or "off".');
  const expression = value.trim();
  if (expression === 'off') return expression;
  try {
    parseBackupCron(expression);
  } catch (error) {
    throw badRequest(`backup_schedule: ${reasonOf(error)}.`);
  }
  return expression;
}

/** The schedule an instance follows: its own, else the broker's default; "off" or neither is none. */
export function effectiveSchedule(instance: Pick<InstanceRecord, 'backupSchedule'>, defaultSchedule?: string): Pick<ScheduleView, 'cron' | 'source'> {
  if (instance.backupSchedule === 'off') return { cron: null, source: 'off' };
  if (instance.backupSchedule) return { cron: instance.backupSchedule, source: 'instance' };
  if (defaultSchedule) return { cron: defaultSchedule, source: 'broker' };
  return { cron: null, source: 'off' };
}

/**
 * Told of every backup this process ends: counts it in the metrics, and records the instance's last success in the
 * store (where every replica's /metrics reads it).
 */
export function backupOutcomes(store: Pick<ScheduleStore, 'setBackupLastSuccess'>, metrics: BackupObserver, log: Logger): BackupObserver {
  return {
    backupEnded(record) {
      metrics.backupEnded(record);
      if (record.state !== 'succeeded') return;
      const seconds = Math.floor(Date.parse(record.finishedAt ?? new Date().toISOString()) / 1000);
      store
        .setBackupLastSuccess(record.instanceId, seconds)
        .catch((error: unknown) => log.warn({ instanceId: record.instanceId, reason: reasonOf(error) }, 'could not record the last successful backup'));
    },
  };
}

/**
 * Scheduled backups, and the removal of deleted instances' backups once retention lets them go. Every replica runs
 * one; a scheduled run is claimed in the store by its instance and run time, so it happens once across replicas. A
 * run that came due while every replica was down is made once, as soon as one is back, however many were missed.
 */
export class BackupScheduler {
  private plan = new Map<string, Planned>();
  private refreshAt = 0;
  private timer?: NodeJS.Timeout;
  private ticking?: Promise<void>;
  private readonly deletedPasses = new PeriodicPass(
    () => this.leasedDeletedPass(),
    (error) => this.parts.log.warn({ reason: reasonOf(error) }, 'the pass over the backups of deleted instances failed; it runs again later'),
  );
  private stopped = true;
  /** Expressions of records that no longer parse, logged once each. */
  private readonly unreadable = new Set<string>();

  constructor(private readonly parts: SchedulerParts) {}

  start(): void {
    this.stopped = false;
    this.timer = setTimeout(() => this.tick(), 0);
    this.deletedPasses.start(this.parts.deletedPassMs, { now: true });
  }

  /** Stops planning runs; backups already started go on (BackupService.settle waits for them). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await Promise.allSettled([this.ticking, this.deletedPasses.stop()]);
  }

  /** The instance's schedule for the list answer: expression, where it comes from, next run, last success and failure. */
  async describe(instanceId: string, backups: readonly BackupRecord[], now = new Date()): Promise<ScheduleView> {
    const { store, defaultSchedule } = this.parts;
    const instance = await store.getInstance(instanceId);
    const live = instance && instance.state !== 'deleted' && this.supportsBackups(instance);
    const { cron, source } = live ? effectiveSchedule(instance, defaultSchedule) : { cron: null, source: 'off' as const };
    let next: string | null = null;
    if (cron) {
      try {
        next = nextRunAfter(parseBackupCron(cron), now)?.toISOString() ?? null;
      } catch {
        next = null;
      }
    }
    const lastSuccess = backups
      .filter((backup) => backup.state === 'succeeded')
      .map((backup) => backup.finishedAt ?? backup.createdAt)
      .sort()
      .at(-1);
    const failures = backups
      .filter((backup) => backup.origin === 'scheduled' && backup.state === 'failed')
      .map((backup) => ({ at: backup.finishedAt ?? backup.createdAt, description: backup.description ?? 'Backup failed.' }));
    const notStarted = (await store.getBackupSchedule(instanceId))?.failure;
    if (notStarted) failures.push(notStarted);
    const lastFailure = failures.sort((a, b) => Date.parse(a.at) - Date.parse(b.at)).at(-1);
    return { cron, source, next, last_success: lastSuccess ?? null, last_failure: lastFailure ?? null };
  }

  /**
   * One pass over the backups of deleted instances (once across replicas per period): each instance's deletion time
   * is taken from its tombstone, or recorded when first seen gone; its backups go once BROKER_BACKUP_KEEP_DELETED_DAYS
   * have passed since, the objects in the store with them.
   */
  async deletedPass(now = new Date()): Promise<number> {
    const { store, backups, retention, log } = this.parts;
    let removed = 0;
    for (const instanceId of await store.instancesWithBackupState()) {
      const instance = await store.getInstance(instanceId);
      if (instance && instance.state !== 'deleted') continue; // a live instance's retention runs after each backup
      const since = await store.markBackupsOrphaned(instanceId, instance?.updatedAt ?? now.toISOString());
      const records = await store.listBackups(instanceId);
      const doomed = backupsToDelete(
        records.map((backup) => ({ id: backup.id, created: backup.createdAt, state: backup.state })),
        retention,
        { now, instanceDeletedAt: new Date(since) },
      );
      for (const { id, reason } of doomed) {
        try {
          await backups.remove(instanceId, id);
          removed++;
          log.info({ instanceId, backup: id, reason }, 'backup of a deleted instance removed by retention');
        } catch (error) {
          log.warn({ instanceId, backup: id, reason: reasonOf(error) }, 'retention could not remove a backup of a deleted instance');
        }
      }
      if ((await store.listBackups(instanceId)).length === 0) await store.forgetBackupState(instanceId);
    }
    return removed;
  }

  private async leasedDeletedPass(): Promise<void> {
    const { store, owner, deletedPassMs, log } = this.parts;
    // One replica per period: the lease of this period's window goes to the first that asks.
    const window = Math.floor(Date.now() / deletedPassMs);
    if (!(await store.claimLease(`backup-deleted-pass-${window}`, owner, 2 * deletedPassMs))) return;
    const removed = await this.deletedPass();
    log.debug({ removed }, 'pass over the backups of deleted instances done');
  }

  private tick(): void {
    this.ticking = this.runDue()
      .catch((error: unknown) => this.parts.log.warn({ reason: reasonOf(error) }, 'backup schedule check failed; trying again'))
      .finally(() => {
        this.ticking = undefined;
        if (this.stopped) return;
        this.timer = setTimeout(() => this.tick(), this.delay());
      });
  }

  /** Until the next run this process plans, or the next refresh of the instance list, whichever is first. */
  private delay(): number {
    let at = this.refreshAt;
    for (const planned of this.plan.values()) if (planned.next && planned.next.getTime() < at) at = planned.next.getTime();
    return Math.min(Math.max(at - Date.now(), 20), this.refreshMs);
  }

  private get refreshMs(): number {
    return this.parts.refreshMs ?? 5000;
  }

  private async runDue(): Promise<void> {
    if (Date.now() >= this.refreshAt) {
      await this.refresh();
      this.refreshAt = Date.now() + this.refreshMs;
    }
    for (const planned of this.plan.values()) {
      if (this.stopped) return;
      if (planned.next && planned.next.getTime() <= Date.now()) await this.runIfDue(planned);
    }
  }

  /** Reads the instances again: new schedules start from the last run claimed (or now), changed ones from now. */
  private async refresh(): Promise<void> {
    const { store, defaultSchedule, log } = this.parts;
    const plan = new Map<string, Planned>();
    for (const instance of await store.listInstances()) {
      if (instance.state !== 'ready' || !this.supportsBackups(instance)) continue;
      const { cron: expression } = effectiveSchedule(instance, defaultSchedule);
      if (!expression) continue;
      const known = this.plan.get(instance.id);
      if (known?.expression === expression) {
        plan.set(instance.id, known);
        continue;
      }
      let cron: BackupCron;
      try {
        cron = parseBackupCron(expression);
      } catch (error) {
        if (!this.unreadable.has(expression))
          log.warn({ instanceId: instance.id, reason: reasonOf(error) }, 'backup schedule not understood; no scheduled backups');
        this.unreadable.add(expression);
        continue;
      }
      const mark = await store.getBackupSchedule(instance.id);
      const handled = mark?.cron === expression ? new Date(mark.lastRunMs) : new Date();
      plan.set(instance.id, { instanceId: instance.id, serviceId: instance.serviceId, expression, cron, handled, next: nextRunAfter(cron, handled) });
    }
    this.plan = plan;
  }

  private async runIfDue(planned: Planned): Promise<void> {
    const { store } = this.parts;
    const now = new Date();
    // Another replica may have claimed runs since: start from the latest one claimed.
    const mark = await store.getBackupSchedule(planned.instanceId);
    if (mark?.cron === planned.expression && mark.lastRunMs > planned.handled.getTime()) planned.handled = new Date(mark.lastRunMs);
    const run = dueRun(planned.cron, planned.handled, now);
    if (run) {
      planned.handled = run;
      if (await store.claimScheduledBackup(planned.instanceId, planned.expression, run.getTime())) await this.launch(planned, run);
    }
    planned.next = nextRunAfter(planned.cron, now);
  }

  private async launch(planned: Planned, run: Date): Promise<void> {
    const { store, backups, observer, log } = this.parts;
    try {
      const backup = await backups.start(planned.instanceId, 'scheduled');
      log.info({ instanceId: planned.instanceId, backup: backup.id, scheduledFor: run.toISOString() }, 'scheduled backup started');
    } catch (error) {
      const at = new Date().toISOString();
      const description = `Scheduled backup of ${run.toISOString()} could not start: ${reasonOf(error)}`;
      log.warn({ instanceId: planned.instanceId, scheduledFor: run.toISOString(), reason: reasonOf(error) }, 'scheduled backup could not start');
      observer.backupEnded({ instanceId: planned.instanceId, serviceId: planned.serviceId, origin: 'scheduled', state: 'failed', finishedAt: at });
      await store
        .putScheduledBackupFailure(planned.instanceId, { at, description })
        .catch((storeError: unknown) =>
          log.warn({ instanceId: planned.instanceId, reason: reasonOf(storeError) }, 'could not record the failed scheduled backup'),
        );
    }
  }

  private supportsBackups(instance: InstanceRecord): boolean {
    try {
      return this.parts.offerings.definitionOf(instance).backups.supported;
    } catch {
      return false;
    }
  }
}
