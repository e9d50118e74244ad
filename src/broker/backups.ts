import { randomBytes } from 'node:crypto';
import { pipeline, type Readable } from 'node:stream';
import { backupsToDelete, openStream, putSealed, type BackupStore, type RetentionSettings } from '../backups/index.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { Logger } from '../log.js';
import { badRequest, conflict, notFound, unprocessable } from '../osb/errors.js';
import type { BackupRecord, InstanceRecord } from '../store/records.js';
import type { DumpRuntime, StateStore } from './contracts.js';
import type { Offerings } from './offerings.js';
import { now, reasonOf } from './operations.js';

/** Where backup records live: the state store. */
export interface BackupRecords {
  putBackup(record: BackupRecord): Promise<void>;
  getBackup(instanceId: string, backupId: string): Promise<BackupRecord | undefined>;
  listBackups(instanceId: string): Promise<BackupRecord[]>;
  deleteBackup(instanceId: string, backupId: string): Promise<void>;
}

export interface BackupParts {
  store: StateStore & BackupRecords;
  runtime: DumpRuntime;
  offerings: Offerings;
  backupStore: BackupStore;
  encryptionKey: Buffer;
  log: Logger;
  /** This process, as the holder of the leases of the backups it makes. */
  owner: string;
  /** How long one backup or restore script may run. */
  timeoutSeconds: number;
  leaseMs: number;
  /** Which backups of an instance go once a new one succeeded (keep last N, N days). */
  retention: RetentionSettings;
}

/** Where a new instance's data comes from: a backup of an instance (of the same offering, organization and space). */
export interface RestoreSource {
  instanceId: string;
  backupId: string;
}

const leaseOf = (backup: BackupRecord) => `backup-${backup.id}`;

/**
 * Backups of instances: the offering's backup script's stdout streamed through compression and encryption into the
 * backup store, never held in memory; and back into a restore script. Each backup is made under a lease, so one
 * whose process died is reported failed rather than in progress for ever.
 */
export class BackupService {
  private readonly running = new Set<Promise<void>>();

  constructor(private readonly parts: BackupParts) {}

  /** Starts a backup of a ready instance; answers at once with its record (in progress). */
  async start(instanceId: string): Promise<BackupRecord> {
    const { store, offerings } = this.parts;
    const instance = await store.getInstance(instanceId);
    if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
    const definition = offerings.definitionOf(instance);
    if (!definition.backups.supported) {
      throw unprocessable('BackupsUnsupported', `${definition.offering.name} instances have no backups: ${definition.backups.reason ?? 'not supported'}`);
    }
    if (instance.state !== 'ready') throw conflict(`The instance is ${instance.state}; only a ready instance can be backed up.`);
    const running = (await store.listBackups(instanceId)).find((backup) => backup.state === 'in progress');
    if (running && (await store.leaseHeld(leaseOf(running)))) throw conflict(`Backup ${running.id} of this instance is still in progress.`);
    const id = `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${randomBytes(4).toString('hex')}`;
    const backup: BackupRecord = {
      id,
      instanceId,
      state: 'in progress',
      serviceId: instance.serviceId,
      planId: instance.planId,
      organizationGuid: instance.organizationGuid,
      spaceGuid: instance.spaceGuid,
      maintenanceVersion: instance.maintenanceVersion,
      storeKey: `${instanceId}/${id}.osb-backup`,
      createdAt: now(),
      owner: this.parts.owner,
    };
    await store.claimLease(leaseOf(backup), this.parts.owner, this.parts.leaseMs);
    await store.putBackup(backup);
    const work = this.run(backup, definition, instance).finally(() => this.running.delete(work));
    this.running.add(work);
    return backup;
  }

  /** The instance's backups, newest first; one whose process stopped is reported (and recorded) failed. */
  async list(instanceId: string): Promise<BackupRecord[]> {
    const backups = await this.parts.store.listBackups(instanceId);
    if (backups.length === 0 && !(await this.parts.store.getInstance(instanceId))) throw notFound(`Service instance ${instanceId} does not exist.`);
    const settled = await Promise.all(backups.map((backup) => this.settleAbandoned(backup)));
    return settled.reverse();
  }

  async remove(instanceId: string, backupId: string): Promise<void> {
    const backup = await this.existing(instanceId, backupId);
    if (backup.state === 'in progress') throw conflict(`Backup ${backupId} is still in progress.`);
    await this.parts.backupStore.delete(backup.storeKey).catch((error: unknown) => {
      if ((error as { problem?: string }).problem !== 'not-found') throw error;
    });
    await this.parts.store.deleteBackup(instanceId, backupId);
  }

  /** The dump of a succeeded backup, decrypted and decompressed as it streams (for export). */
  async download(instanceId: string, backupId: string): Promise<Readable> {
    const backup = await this.existing(instanceId, backupId);
    if (backup.state !== 'succeeded') throw conflict(`Backup ${backupId} is ${backup.state}; only a succeeded backup can be downloaded.`);
    return this.opened(backup);
  }

  /** The backup's object from the store, verified, decrypted and decompressed as it flows; any damage fails the stream. */
  private async opened(backup: BackupRecord): Promise<Readable> {
    const sealed = await this.parts.backupStore.get(backup.storeKey);
    const opening = openStream(this.parts.encryptionKey, { context: contextOf(backup) });
    pipeline(sealed, opening.stream, () => {}); // an error reaches the reader through opening.stream
    return opening.stream;
  }

  /**
   * Checks, at provision time, that `restore_from` names a succeeded backup the new instance may start from: same
   * offering, organization and space. Every refusal reads the same, so it never tells whether another instance exists.
   */
  async authorise(restoreFrom: unknown, target: Pick<InstanceRecord, 'serviceId' | 'organizationGuid' | 'spaceGuid'>): Promise<RestoreSource> {
    const request = restoreFrom as { instance?: unknown; backup?: unknown } | null;
    if (typeof request !== 'object' || request === null || typeof request.instance !== 'string' || typeof request.backup !== 'string') {
      throw badRequest('restore_from must be {"instance": "<instance id>", "backup": "<backup id>" or "latest"}.');
    }
    const candidates = (await this.parts.store.listBackups(request.instance)).filter(
      (backup) =>
        backup.state === 'succeeded' &&
        backup.serviceId === target.serviceId &&
        backup.organizationGuid === target.organizationGuid &&
        backup.spaceGuid === target.spaceGuid,
    );
    const chosen = request.backup === 'latest' ? candidates.at(-1) : candidates.find((backup) => backup.id === request.backup);
    if (!chosen) {
      throw badRequest(
        'restore_from does not name a backup this instance can start from (a succeeded backup of an instance of the same service offering, organization and space).',
      );
    }
    return { instanceId: chosen.instanceId, backupId: chosen.id };
  }

  /** Loads a backup into an instance whose service runs (a new one, during its provision). */
  async restoreInto(definition: ServiceDefinition, instance: InstanceRecord, source: RestoreSource, signal: AbortSignal): Promise<void> {
    const backup = await this.parts.store.getBackup(source.instanceId, source.backupId);
    if (!backup || backup.state !== 'succeeded') throw new Error(`backup ${source.backupId} is gone`);
    const dump = await this.opened(backup);
    await this.parts.runtime.restore(definition, instance, dump, { timeoutSeconds: this.parts.timeoutSeconds, signal });
  }

  /** Resolves once the backups this process is making have ended. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }

  private async run(backup: BackupRecord, definition: ServiceDefinition, instance: InstanceRecord): Promise<void> {
    const { store, runtime, backupStore, log } = this.parts;
    const controller = new AbortController();
    const beat = setInterval(() => {
      store.claimLease(leaseOf(backup), this.parts.owner, this.parts.leaseMs).catch(() => undefined);
    }, this.parts.leaseMs / 3);
    try {
      const dump = await runtime.backup(definition, instance, { timeoutSeconds: this.parts.timeoutSeconds, signal: controller.signal });
      const summary = await putSealed(backupStore, backup.storeKey, dump.stdout, this.parts.encryptionKey, { context: contextOf(backup) });
      await dump.finished;
      await store.putBackup({
        ...backup,
        state: 'succeeded',
        finishedAt: now(),
        plainBytes: summary.plainBytes,
        storedBytes: summary.storedBytes,
        sha256: summary.sha256,
        owner: undefined,
      });
      log.info({ instanceId: backup.instanceId, backup: backup.id, bytes: summary.storedBytes }, 'backup succeeded');
      await this.prune(backup.instanceId);
    } catch (error) {
      controller.abort();
      const reason = reasonOf(error);
      log.error({ instanceId: backup.instanceId, backup: backup.id, reason }, 'backup failed');
      await backupStore.delete(backup.storeKey).catch(() => undefined);
      await store
        .putBackup({ ...backup, state: 'failed', finishedAt: now(), description: `Backup failed: ${reason}`, owner: undefined })
        .catch(() => undefined);
    } finally {
      clearInterval(beat);
      await store.releaseLease(leaseOf(backup), this.parts.owner).catch(() => undefined);
    }
  }

  /** Applies retention to the instance's backups; a backup that cannot be deleted now goes at the next pass. */
  private async prune(instanceId: string): Promise<void> {
    const backups = await this.parts.store.listBackups(instanceId);
    const doomed = backupsToDelete(
      backups.map((backup) => ({ id: backup.id, created: backup.createdAt, state: backup.state })),
      this.parts.retention,
    );
    for (const { id, reason } of doomed) {
      await this.remove(instanceId, id).then(
        () => this.parts.log.info({ instanceId, backup: id, reason }, 'backup removed by retention'),
        (error: unknown) => this.parts.log.warn({ instanceId, backup: id, reason: reasonOf(error) }, 'retention could not remove a backup'),
      );
    }
  }

  private async existing(instanceId: string, backupId: string): Promise<BackupRecord> {
    const backup = await this.parts.store.getBackup(instanceId, backupId);
    if (!backup) throw notFound(`Backup ${backupId} of service instance ${instanceId} does not exist.`);
    return this.settleAbandoned(backup);
  }

  private async settleAbandoned(backup: BackupRecord): Promise<BackupRecord> {
    if (backup.state !== 'in progress' || (await this.parts.store.leaseHeld(leaseOf(backup)))) return backup;
    const failed: BackupRecord = {
      ...backup,
      state: 'failed',
      finishedAt: now(),
      description: 'Backup failed: the broker process making it stopped.',
      owner: undefined,
    };
    await this.parts.store.putBackup(failed);
    return failed;
  }
}

/** Bound into every sealed chunk: a backup restores only as itself. */
const contextOf = (backup: BackupRecord) => `${backup.instanceId}/${backup.id}`;
