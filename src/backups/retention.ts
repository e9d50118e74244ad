/** Which backups retention removes: a pure function of the list, the settings and the time. */

export type BackupState = 'succeeded' | 'failed' | 'in progress';

export interface RetentionCandidate {
  id: string;
  /** When the backup was started (a Date, epoch milliseconds or an ISO string). */
  created: Date | number | string;
  state: BackupState;
}

export interface RetentionSettings {
  /** The last N successful backups are kept; 0: no count rule. */
  keepLast: number;
  /** Successful backups younger than N days are kept; 0: no age rule. With both rules at 0 every successful backup is kept. */
  keepDays: number;
  /** Once an instance is deleted, its backups are kept this many days more, then all go; 0: they go with it. */
  keepDeletedDays: number;
}

export interface RetentionContext {
  /** Default: now. */
  now?: Date;
  /** Set when the backups' instance was deleted. */
  instanceDeletedAt?: Date;
}

export interface RetentionDecision {
  id: string;
  /** Why it goes, for the log. */
  reason: string;
}

const DAY_MS = 86_400_000;
/** A failed backup is kept this long so its error can be looked at. */
const FAILED_KEPT_MS = DAY_MS;

function days(count: number): string {
  return count === 1 ? '1 day' : `${count} days`;
}

/**
 * The backups to delete, oldest first:
 * - a backup still in progress, or one whose `created` is not a valid time, is never deleted;
 * - a failed backup goes once it is more than a day old;
 * - a successful backup is kept while it is among the last `keepLast` successful ones or younger than `keepDays`
 *   days (either rule is enough); the newest successful backup is always kept;
 * - once the instance has been deleted for `keepDeletedDays` days, every backup that is not in progress goes, the
 *   newest successful one too.
 */
export function backupsToDelete(backups: readonly RetentionCandidate[], settings: RetentionSettings, context: RetentionContext = {}): RetentionDecision[] {
  const now = (context.now ?? new Date()).getTime();
  const dated = backups
    .map((backup) => ({ ...backup, at: new Date(backup.created).getTime() }))
    .filter((backup) => backup.state !== 'in progress' && Number.isFinite(backup.at));
  const decisions: Array<RetentionDecision & { at: number }> = [];

  const deletedAt = context.instanceDeletedAt?.getTime();
  if (deletedAt !== undefined && now >= deletedAt + settings.keepDeletedDays * DAY_MS) {
    const reason = settings.keepDeletedDays === 0 ? 'its instance was deleted' : `its instance was deleted more than ${days(settings.keepDeletedDays)} ago`;
    decisions.push(...dated.map(({ id, at }) => ({ id, at, reason })));
  } else {
    for (const backup of dated) {
      if (backup.state === 'failed' && now - backup.at > FAILED_KEPT_MS) {
        decisions.push({ id: backup.id, at: backup.at, reason: 'failed, and more than a day old' });
      }
    }
    const succeeded = dated.filter((backup) => backup.state === 'succeeded').sort((a, b) => b.at - a.at || (a.id < b.id ? 1 : -1));
    const { keepLast, keepDays } = settings;
    if (keepLast > 0 || keepDays > 0) {
      succeeded.forEach((backup, index) => {
        if (index === 0) return; // the newest successful backup stays, whatever the rules say
        const inLast = keepLast > 0 && index < keepLast;
        const young = keepDays > 0 && now - backup.at < keepDays * DAY_MS;
        if (inLast || young) return;
        const rules = [keepLast > 0 && `not among the last ${keepLast} successful backups`, keepDays > 0 && `older than ${days(keepDays)}`];
        decisions.push({ id: backup.id, at: backup.at, reason: rules.filter(Boolean).join(' and ') });
      });
    }
  }
  return decisions.sort((a, b) => a.at - b.at || (a.id < b.id ? -1 : 1)).map(({ id, reason }) => ({ id, reason }));
}
