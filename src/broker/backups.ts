import { randomBytes } from 'node:crypto';
import { pipeline, type Readable } from 'node:stream';
import {
  BackupFormatError,
  BackupStoreError,
  backupsToDelete,
  openStream,
  putSealed,
  type BackupStore,
  type RetentionSettings,
  type StreamSummary,
} from '../backups/index.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { Logger } from '../log.js';
import { BrokerError, badRequest, conflict, notFound, unavailable, unprocessable } from '../osb/errors.js';
import type { BackupOrigin, BackupRecord, InstanceRecord } from '../store/records.js';
import type { BackupObserver, DumpRuntime, StateStore } from './contracts.js';
import type { Offerings } from './offerings.js';
import { now, reasonOf, RENEWAL_WAIT_MS, untilEnded } from './operations.js';

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
  /** Told of each backup this process ends (metrics, the last success). */
  observer?: BackupObserver;
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
  async start(instanceId: string, origin: BackupOrigin = 'manual'): Promise<BackupRecord> {
    const { backup, work } = await this.begin(instanceId, origin);
    void work;
    return backup;
  }

  /** Backs up a ready instance and resolves with the ended backup (succeeded or failed): the first step of clone_of. */
  async backUpNow(instanceId: string): Promise<BackupRecord> {
    const { backup, work } = await this.begin(instanceId, 'manual');
    await work;
    return (await this.parts.store.getBackup(instanceId, backup.id)) ?? { ...backup, state: 'failed', description: 'Backup failed: its record is gone.' };
  }

  private async begin(instanceId: string, origin: BackupOrigin): Promise<{ backup: BackupRecord; work: Promise<void> }> {
    const { store, offerings } = this.parts;
    const instance = await store.getInstance(instanceId);
    if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
    const definition = offerings.definitionOf(instance);
    if (!definition.backups.supported) {
      throw unprocessable('BackupsUnsupported', `${definition.offering.name} instances have no backups: ${definition.backups.reason ?? 'not supported'}`);
    }
    if (instance.state !== 'ready') throw conflict(`The instance is ${instance.state}; only a ready instance can be backed up.`);
    // An update or an in-place restore replaces the container (and its volume) under the backup script.
    const operation = await store.getOperation(instance.lastOperationId);
    // A TLS renewal ends in a moment: a backup (a scheduled one above all) waits for it rather than failing.
    const renewalEnded = operation?.type === 'tls-renewal' && (await untilEnded(store, operation.id, RENEWAL_WAIT_MS));
    if (operation?.state === 'in progress' && !renewalEnded)
      throw conflict(`The instance is busy (${operation.type} in progress); back it up once that has ended.`);
    const running = await this.runningBackup(instanceId);
    if (running) throw conflict(`Backup ${running} of this instance is still in progress.`);
    const backup = newRecord(instance, origin, this.parts.owner);
    await store.claimLease(leaseOf(backup), this.parts.owner, this.parts.leaseMs);
    await store.putBackup(backup);
    const work = this.run(backup, definition, instance).finally(() => this.running.delete(work));
    this.running.add(work);
    return { backup, work };
  }

  /**
   * Seals an uploaded dump (as `download` gives it) into the store as a new backup of the instance, streaming; resolves
   * with the succeeded record. Its content is only checked by the restore script, when it is restored.
   */
  async import(instanceId: string, dump: Readable): Promise<BackupRecord> {
    const { store, offerings, backupStore, log } = this.parts;
    const instance = await store.getInstance(instanceId);
    if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
    const definition = offerings.definitionOf(instance);
    if (!definition.backups.supported) {
      throw unprocessable('BackupsUnsupported', `${definition.offering.name} instances have no backups: ${definition.backups.reason ?? 'not supported'}`);
    }
    const backup = newRecord(instance, 'import', this.parts.owner);
    await store.claimLease(leaseOf(backup), this.parts.owner, this.parts.leaseMs);
    await store.putBackup(backup);
    const beat = setInterval(() => {
      store.claimLease(leaseOf(backup), this.parts.owner, this.parts.leaseMs).catch(() => undefined);
    }, this.parts.leaseMs / 3);
    try {
      const summary = await putSealed(backupStore, backup.storeKey, dump, this.parts.encryptionKey, sealing(definition, backup));
      if (summary.plainBytes === 0) throw badRequest('The upload is empty: send the dump as the request body (application/octet-stream).');
      const succeeded = await this.recordSucceeded(backup, summary);
      log.info({ instanceId, backup: backup.id, bytes: summary.storedBytes }, 'backup imported');
      return succeeded;
    } catch (error) {
      const reason = reasonOf(error);
      log.warn({ instanceId, backup: backup.id, reason }, 'import failed');
      await backupStore.delete(backup.storeKey).catch(() => undefined);
      const failed: BackupRecord = { ...backup, state: 'failed', finishedAt: now(), description: `Import failed: ${reason}`, owner: undefined };
      this.parts.observer?.backupEnded(failed);
      await store.putBackup(failed).catch(() => undefined);
      // The upload itself ending early is the client's doing; a store that fails is ours.
      if (error instanceof BrokerError) throw error;
      if (error instanceof BackupStoreError) throw unavailable(`Import failed: ${reason}`);
      throw badRequest(`Import failed: ${reason}`);
    } finally {
      clearInterval(beat);
      await store.releaseLease(leaseOf(backup), this.parts.owner).catch(() => undefined);
    }
  }

  /** The id of the backup of the instance a live process is making, if any. */
  async runningBackup(instanceId: string): Promise<string | undefined> {
    const running = (await this.parts.store.listBackups(instanceId)).find((backup) => backup.state === 'in progress');
    return running && (await this.parts.store.leaseHeld(leaseOf(running))) ? running.id : undefined;
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

  /**
   * The backup's object from the store, verified, decrypted and decompressed as it flows; any damage fails the stream.
   * `onObjectError` hears of a fault of the object or the store (not of the reader going away).
   */
  private async opened(backup: BackupRecord, onObjectError: (error: Error) => void = () => {}): Promise<Readable> {
    const sealed = await this.parts.backupStore.get(backup.storeKey);
    const opening = openStream(this.parts.encryptionKey, { context: contextOf(backup) });
    sealed.once('error', onObjectError);
    opening.stream.once('error', (error) => {
      if (error instanceof BackupFormatError) onObjectError(error);
    });
    pipeline(sealed, opening.stream, () => {}); // an error reaches the reader through opening.stream
    return opening.stream;
  }

  /**
   * Checks, at provision time, that `restore_from` names a succeeded backup the new instance may start from: same
   * offering, organization and space. Every refusal reads the same, so it never tells whether another instance exists.
   */
  async authorise(
    restoreFrom: unknown,
    target: Pick<InstanceRecord, 'serviceId' | 'organizationGuid' | 'spaceGuid'>,
    name = 'restore_from',
  ): Promise<RestoreSource> {
    const request = restoreFrom as { instance?: unknown; backup?: unknown } | null;
    if (typeof request !== 'object' || request === null || typeof request.instance !== 'string' || typeof request.backup !== 'string') {
      throw badRequest(`${name} must be {"instance": "<instance id>", "backup": "<backup id>" or "latest"}.`);
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
        `${name} does not name a backup this instance can start from (a succeeded backup of an instance of the same service offering, organization and space).`,
      );
    }
    return { instanceId: chosen.instanceId, backupId: chosen.id };
  }

  /**
   * Checks, at provision time, that `clone_of` names a live instance the new one may be a copy of: ready, of the same
   * offering, organization and space. Every refusal reads the same, as for restore_from.
   */
  async authoriseClone(cloneOf: unknown, target: Pick<InstanceRecord, 'serviceId' | 'organizationGuid' | 'spaceGuid'>): Promise<string> {
    if (typeof cloneOf !== 'string' || cloneOf === '') throw badRequest('clone_of must be the id of a service instance ("<instance id>").');
    const source = await this.parts.store.getInstance(cloneOf);
    const allowed =
      source?.state === 'ready' &&
      source.serviceId === target.serviceId &&
      source.organizationGuid === target.organizationGuid &&
      source.spaceGuid === target.spaceGuid;
    if (!allowed) {
      throw badRequest(
        'clone_of does not name an instance this instance can be a copy of (a ready instance of the same service offering, organization and space).',
      );
    }
    return cloneOf;
  }

  /**
   * Loads a succeeded backup into an instance whose service runs (a new one during its provision, or a fresh volume
   * of an in-place restore). A failure says what went wrong first: the stored object (missing, damaged, truncated,
   * sealed with another key, store unreachable) rather than the restore script that saw its input end.
   */
  async restoreInto(definition: ServiceDefinition, instance: InstanceRecord, source: RestoreSource, signal: AbortSignal): Promise<void> {
    const backup = await this.parts.store.getBackup(source.instanceId, source.backupId);
    if (!backup || backup.state !== 'succeeded') throw new Error(`backup ${source.backupId} of instance ${source.instanceId} is gone`);
    let objectError: Error | undefined;
    try {
      const dump = await this.opened(backup, (error) => (objectError ??= error));
      await this.parts.runtime.restore(definition, instance, dump, { timeoutSeconds: this.parts.timeoutSeconds, signal });
    } catch (error) {
      const cause = objectError ?? error;
      const reason = reasonOf(cause);
      if (cause instanceof BackupFormatError || cause instanceof BackupStoreError || objectError) {
        // Damaged, truncated, sealed with another key, or the store does not answer: the object is the cause.
        throw new Error(`backup ${backup.id} of instance ${backup.instanceId} cannot be read: ${reason}`, { cause: error });
      }
      throw new Error(`the ${definition.offering.name} restore script refused backup ${backup.id} of instance ${backup.instanceId}: ${reason}`, {
        cause: error,
      });
    }
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
      const summary = await putSealed(backupStore, backup.storeKey, dump.stdout, this.parts.encryptionKey, sealing(definition, backup));
      await dump.finished;
      await this.recordSucceeded(backup, summary);
      log.info({ instanceId: backup.instanceId, backup: backup.id, bytes: summary.storedBytes }, 'backup succeeded');
      await this.prune(backup.instanceId);
    } catch (error) {
      controller.abort();
      const reason = reasonOf(error);
      log.error({ instanceId: backup.instanceId, backup: backup.id, reason }, 'backup failed');
      await backupStore.delete(backup.storeKey).catch(() => undefined);
      const failed: BackupRecord = { ...backup, state: 'failed', finishedAt: now(), description: `Backup failed: ${reason}`, owner: undefined };
      this.parts.observer?.backupEnded(failed);
      await store.putBackup(failed).catch(() => undefined);
    } finally {
      clearInterval(beat);
      await store.releaseLease(leaseOf(backup), this.parts.owner).catch(() => undefined);
    }
  }

  /** Records a backup whose object is whole in the store as succeeded, with its figures, and tells the observer. */
  private async recordSucceeded(backup: BackupRecord, summary: StreamSummary): Promise<BackupRecord> {
    const succeeded: BackupRecord = {
      ...backup,
      state: 'succeeded',
      finishedAt: now(),
      plainBytes: summary.plainBytes,
      storedBytes: summary.storedBytes,
      sha256: summary.sha256,
      owner: undefined,
    };
    await this.parts.store.putBackup(succeeded);
    this.parts.observer?.backupEnded(succeeded);
    return succeeded;
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

/** A new backup of the instance, in progress, held by `owner`. */
function newRecord(instance: InstanceRecord, origin: BackupOrigin, owner: string): BackupRecord {
  const id = `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${randomBytes(4).toString('hex')}`;
  return {
    id,
    instanceId: instance.id,
    state: 'in progress',
    serviceId: instance.serviceId,
    planId: instance.planId,
    organizationGuid: instance.organizationGuid,
    spaceGuid: instance.spaceGuid,
    maintenanceVersion: instance.maintenanceVersion,
    storeKey: `${instance.id}/${id}.osb-backup`,
    createdAt: now(),
    owner,
    origin,
  };
}

/** Bound into every sealed chunk: a backup restores only as itself. */
const contextOf = (backup: BackupRecord) => `${backup.instanceId}/${backup.id}`;

/** How a backup is sealed: bound to itself, and not compressed again when the offering's dump is compressed already. */
const sealing = (definition: ServiceDefinition, backup: BackupRecord) => ({
  context: contextOf(backup),
  gzipLevel: definition.backups.compressed ? 0 : 1,
});
