import type { Readable } from 'node:stream';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { BackupRecord } from '../store/records.js';
import type { DashboardInstance } from './service.js';

/** The backup service as the dashboard uses it (src/broker/backups.ts). */
export interface BackupSource {
  list(instanceId: string): Promise<BackupRecord[]>;
  start(instanceId: string): Promise<BackupRecord>;
  download(instanceId: string, backupId: string): Promise<Readable>;
}

/** An instance's backup schedule as the broker's API shows it. */
export interface ScheduleView {
  cron: string | null;
  source: 'instance' | 'broker' | 'off';
  next: string | null;
  last_success: string | null;
  last_failure: { at: string; description: string } | null;
}

/** The schedules, when the broker has them. */
export interface ScheduleSource {
  describe(instanceId: string, backups: readonly BackupRecord[]): Promise<ScheduleView>;
}

/** What the backups panel shows: no store key, no owner, no checksum. */
export interface BackupsPanel {
  supported: boolean;
  /** Why the offering has no backups (from its catalog folder). */
  reason?: string;
  /** What a backup of this offering holds. */
  contains?: string;
  backups: Array<{
    id: string;
    state: string;
    origin: string;
    created: string;
    finished?: string;
    size?: number;
    dump_size?: number;
    description?: string;
  }>;
  schedule: ScheduleView | null;
}

/** The dashboard's view of an instance's backups: the list and schedule, "back up now" and the dump of one. */
export class DashboardBackups {
  private readonly definitions: Map<string, ServiceDefinition>;

  constructor(
    private readonly backups: BackupSource,
    definitions: ServiceDefinition[],
    private readonly schedules?: ScheduleSource,
  ) {
    this.definitions = new Map(definitions.map((definition) => [definition.offering.id, definition]));
  }

  async panel(instance: DashboardInstance): Promise<BackupsPanel> {
    const spec = this.definitions.get(instance.serviceId)?.backups;
    if (!spec?.supported) return { supported: false, reason: spec?.reason ?? 'the offering declares no backups', backups: [], schedule: null };
    const records = await this.backups.list(instance.id);
    return {
      supported: true,
      contains: spec.contains,
      backups: records.map((backup) => ({
        id: backup.id,
        state: backup.state,
        origin: backup.origin ?? 'manual',
        created: backup.createdAt,
        finished: backup.finishedAt,
        size: backup.storedBytes,
        dump_size: backup.plainBytes,
        description: backup.description,
      })),
      schedule: this.schedules ? await this.schedules.describe(instance.id, records) : null,
    };
  }

  async start(instance: DashboardInstance): Promise<{ id: string; state: string }> {
    const backup = await this.backups.start(instance.id);
    return { id: backup.id, state: backup.state };
  }

  download(instance: DashboardInstance, backupId: string): Promise<Readable> {
    return this.backups.download(instance.id, backupId);
  }
}
