import { badRequest, concurrencyError, conflict, notFound, unprocessable } from '../osb/errors.js';
import type { InPlaceRestorePlan, InstanceRecord, OperationRecord } from '../store/records.js';
import type { BackupService } from './backups.js';
import { swapsVolumes, type InstanceRuntime, type VolumeSwapRuntime } from './contracts.js';
import { checkId } from './ids.js';
import { afterFirstWrite, busyWith, locked, type LifecycleParts } from './lifecycle-parts.js';
import { mustHandBack, now, reasonOf } from './operations.js';

/** What POST /broker/v1/instances/:id/restore takes: a backup id or "latest", of this instance unless `instance` names another. */
export interface RestoreRequest {
  backup?: unknown;
  instance?: unknown;
}

/** A fresh volume's name: the instance's first volume name with a suffix of the operation, never growing restore after restore. */
const freshVolumeName = (volumeName: string, operationId: string) => `${volumeName.replace(/-r[0-9a-z]{8}$/, '')}-r${operationId.slice(0, 8)}`;

/**
 * Restores a backup into a running instance, as an instance operation (locked, leased, continued elsewhere when its
 * process dies). The backup is loaded into a FRESH volume and the instance switched over only once it is whole: stop
 * the container, make it again on the fresh volume (same name and ports), run the restore script, create the users of
 * the live bindings again with their stored credentials (apps keep working), check readiness; then record the new
 * volume and remove the old one. Any failure before that record puts the container back on the old volume and removes
 * the fresh one. A process that continues an operation whose switch had begun puts it back the same way, so at any
 * moment one of the two volumes holds whole data and the record names it.
 */
export class InPlaceRestore {
  constructor(private readonly parts: LifecycleParts & { backups: BackupService }) {}

  /** Starts a restore; answers with its operation (202 at the HTTP layer). */
  async request(instanceId: string, body: RestoreRequest): Promise<{ operation: string }> {
    const { store, runner, runtime, offerings, backups, log } = this.parts;
    checkId(instanceId, 'instance_id');
    if (typeof body !== 'object' || body === null || typeof body.backup !== 'string' || (body.instance !== undefined && typeof body.instance !== 'string')) {
      throw badRequest('The body must be {"backup": "<backup id>" or "latest"} and optionally "instance": "<source instance id>".');
    }
    const request = { backup: body.backup, instance: body.instance ?? instanceId };
    return locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
      const definition = offerings.definitionOf(instance);
      if (!definition.backups.supported) {
        throw unprocessable('BackupsUnsupported', `${definition.offering.name} instances have no backups: ${definition.backups.reason ?? 'not supported'}`);
      }
      if (!swapsVolumes(runtime)) {
        throw unprocessable(
          'InPlaceRestoreUnsupported',
          'Restoring into a running instance is not offered on Docker Swarm; provision a new instance with restore_from instead.',
        );
      }
      const lastOperation = await store.getOperation(instance.lastOperationId);
      if (lastOperation?.state === 'in progress') throw busyWith(lastOperation);
      if (instance.state !== 'ready') {
        throw unprocessable('InstanceNotUsable', `Service instance ${instanceId} is ${instance.state}; only a ready instance can be restored into.`);
      }
      const busyBinding = (await store.listBindings(instanceId)).find((binding) => binding.state === 'creating' || binding.state === 'deleting');
      if (busyBinding) throw concurrencyError(`Service binding ${busyBinding.id} is being ${busyBinding.state === 'creating' ? 'created' : 'deleted'}.`);
      const backup = await backups.runningBackup(instanceId);
      if (backup) throw conflict(`Backup ${backup} of this instance is still in progress; restore once it has ended.`);
      // The same rules (and the same refusal) as restore_from at provision.
      const source = await backups.authorise(request, instance, 'The restore request');
      const created = runner.create('restore', instanceId, `Restore of backup ${source.backupId} of instance ${source.instanceId} requested.`);
      const plan: InPlaceRestorePlan = { source, previousVolume: instance.volumeName, freshVolume: freshVolumeName(instance.volumeName, created.id) };
      const operation: OperationRecord = { ...created, restore: plan };
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () => store.putInstance({ ...instance, lastOperationId: operation.id, updatedAt: now() }));
      log.info({ instanceId, operation: operation.id, source: source.instanceId, backup: source.backupId }, 'restoring in place');
      runner.launch(operation, (signal) => this.run(operation, signal));
      return { operation: operation.id };
    });
  }

  /** Runs, or continues, a restore to its end: restored, or back on the data it had. */
  async run(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const { store, runner, runtime, offerings, backups, log } = this.parts;
    const plan = operation.restore;
    const instance = await store.getInstance(operation.instanceId);
    if (!instance || !plan || instance.lastOperationId !== operation.id || !swapsVolumes(runtime)) {
      return runner.finish(operation, 'failed', 'Restore failed: the instance record is missing or another operation took it over.');
    }
    const definition = offerings.definitionOf(instance);
    const { source, previousVolume, freshVolume } = plan;
    const what = `backup ${source.backupId} of instance ${source.instanceId}`;
    const fresh: InstanceRecord = { ...instance, volumeName: freshVolume };
    const progress = (description: string) => runner.progress(operation, description);

    // The record names the fresh volume: the switch was made before the process stopped; only tidying is left.
    if (instance.volumeName === freshVolume) return this.complete(operation, instance, previousVolume, what);
    // The switch had begun in a process that stopped: its state is unknown, so the old data goes back.
    if (plan.swapping) return this.rollBack(operation, instance, plan, 'the broker process running it stopped before it was done', signal);

    try {
      operation.restore = { ...plan, swapping: true };
      await progress(`Restoring ${what}: starting the instance on a fresh volume.`);
      await runtime.moveToVolume(definition, fresh, freshVolume, signal, progress);
      await progress(`Loading ${what} into the fresh volume.`);
      await backups.restoreInto(definition, fresh, source, signal);
      const bindings = (await store.listBindings(instance.id)).filter((binding) => binding.state === 'ready');
      if (bindings.length > 0) {
        await progress(`Creating the users of the instance's ${bindings.length} binding(s) again, with their credentials.`);
        // The stored credentials stay what the apps have; extra fields the script prints are the ones issued before.
        for (const binding of bindings) await runtime.bind(definition, fresh, binding, signal);
      }
      await progress('Checking that the restored instance accepts a login.');
      await runtime.checkReady(definition, fresh, signal);
      await store.withLock(
        instance.id,
        async () => {
          const current = await store.getInstance(instance.id);
          if (current?.lastOperationId !== operation.id) throw new Error('another operation took the instance over');
          await store.putInstance({ ...current, volumeName: freshVolume, updatedAt: now() });
        },
        60_000,
      );
      await this.complete(operation, fresh, previousVolume, what);
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(error);
      log.error({ instanceId: instance.id, operation: operation.id, reason }, 'in-place restore failed; going back to the previous data');
      await this.rollBack(operation, instance, operation.restore ?? plan, reason, signal);
    }
  }

  /** After the switch: the old volume goes, and the operation ends succeeded. */
  private async complete(operation: OperationRecord, instance: InstanceRecord, previousVolume: string, what: string): Promise<void> {
    const { runner, log } = this.parts;
    const runtime = this.parts.runtime as InstanceRuntime & VolumeSwapRuntime;
    await runtime
      .removeInstanceVolume(instance, previousVolume)
      .catch((error: unknown) =>
        log.warn({ instanceId: instance.id, volume: previousVolume, reason: reasonOf(error) }, 'the volume from before the restore was not removed'),
      );
    await runner.finishInstance(operation, (current) => current, 'succeeded', `Restored ${what}; the instance runs on it.`);
  }

  /** Puts the container back on the volume it had, removes the fresh one, and ends the operation failed with `reason`. */
  private async rollBack(operation: OperationRecord, instance: InstanceRecord, plan: InPlaceRestorePlan, reason: string, signal: AbortSignal): Promise<void> {
    const { runner, offerings, log } = this.parts;
    const runtime = this.parts.runtime as InstanceRuntime & VolumeSwapRuntime;
    const definition = offerings.definitionOf(instance);
    try {
      await runner.progress(operation, `Restore failed (${reason}); starting the instance on its data from before.`);
      await runtime.moveToVolume(definition, instance, plan.previousVolume, signal, async () => {});
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const again = reasonOf(error);
      log.error({ instanceId: instance.id, operation: operation.id, reason: again }, 'starting the instance on its previous data failed');
      // Both volumes stay: the record names the old one, and the reconciler starts the instance on it again.
      await runner.finishInstance(
        operation,
        (current) => current,
        'failed',
        `Restore failed: ${reason}. Starting the instance on its data from before failed too (${again}); that data is kept and the broker keeps trying to start it.`,
        { instanceUsable: false },
      );
      return;
    }
    await runtime
      .removeInstanceVolume(instance, plan.freshVolume)
      .catch((error: unknown) => log.warn({ instanceId: instance.id, volume: plan.freshVolume, reason: reasonOf(error) }, 'the fresh volume was not removed'));
    await runner.finishInstance(
      operation,
      (current) => current,
      'failed',
      `Restore failed: ${reason}. The instance runs on its data from before the restore.`,
      {
        instanceUsable: true,
      },
    );
  }
}
