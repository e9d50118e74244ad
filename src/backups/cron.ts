import { Cron } from 'croner';

/**
 * Backup schedules: cron expressions of 5 fields (minute precision) or 6 (with seconds first), always read in UTC so
 * every replica, wherever it runs, agrees on when a run is due. Pure functions of the expression and the time.
 */
export type BackupCron = Cron;

/** The expression parsed; throws an Error saying what is wrong with it (croner's own words) or that it never runs. */
export function parseBackupCron(expression: string): BackupCron {
  let cron: Cron;
  try {
    cron = new Cron(expression.trim(), { mode: '5-or-6-parts', timezone: 'Etc/UTC' });
  } catch (error) {
    throw new Error(`"${expression}" is not a cron expression of 5 or 6 fields: ${(error as Error).message.replace(/^CronPattern:\s*/, '')}`, {
      cause: error,
    });
  }
  if (!cron.nextRun()) throw new Error(`"${expression}" never comes due`);
  return cron;
}

/** The first run strictly after `after`; null when the expression has no run left. */
export function nextRunAfter(cron: BackupCron, after: Date): Date | null {
  return cron.nextRun(after);
}

/** The latest run at or before `now`; undefined when there was none (within croner's search range). */
export function latestRunAtOrBefore(cron: BackupCron, now: Date): Date | undefined {
  // previousRuns excludes a run exactly at its reference; one millisecond later includes it.
  return cron.previousRuns(1, new Date(now.getTime() + 1))[0];
}

/**
 * The run to make now, if any: the latest run time after `lastHandled` (the last run time a replica claimed) and at
 * or before `now`. Runs missed while every replica was down are not made one by one: only the latest of them is, so
 * a broker that comes back makes at most one catch-up run.
 */
export function dueRun(cron: BackupCron, lastHandled: Date, now: Date): Date | undefined {
  const next = cron.nextRun(lastHandled);
  if (!next || next.getTime() > now.getTime()) return undefined;
  const latest = latestRunAtOrBefore(cron, now);
  return latest && latest.getTime() > lastHandled.getTime() ? latest : next;
}
