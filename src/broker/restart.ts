import { concurrencyError, conflict, notFound, unprocessable } from '../osb/errors.js';
import type { OperationRecord } from '../store/records.js';
import { restartsInstances } from './contracts.js';
import { checkId } from './ids.js';
import { afterFirstWrite, busyWith, locked, type LifecycleParts } from './lifecycle-parts.js';
import { mustHandBack, now, reasonOf } from './operations.js';

/**
 * Restarts an instance's service on request (POST /broker/v1/instances/:id/restart), as an instance operation: locked
 * against other operations, leased, and continued by another process when its own dies. A restart is idempotent, so
 * a process that takes one over simply restarts again. The reconciler leaves the instance alone meanwhile (an
 * operation is in progress), so the stop is never mistaken for a crash.
 */
export class InstanceRestart {
  constructor(private readonly parts: LifecycleParts) {}

  /** Starts a restart; answers with its operation (202 at the HTTP layer). */
  async request(instanceId: string): Promise<{ operation: string }> {
    const { store, runner, runtime, backups, log } = this.parts;
    checkId(instanceId, 'instance_id');
    return locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
      if (!restartsInstances(runtime)) throw unprocessable('RestartUnsupported', 'This broker cannot restart instances on its container runtime.');
      const lastOperation = await store.getOperation(instance.lastOperationId);
      if (lastOperation?.state === 'in progress') throw busyWith(lastOperation);
      if (instance.state !== 'ready') {
        throw unprocessable('InstanceNotUsable', `Service instance ${instanceId} is ${instance.state}; only a ready instance can be restarted.`);
      }
      const busyBinding = (await store.listBindings(instanceId)).find((binding) => binding.state === 'creating' || binding.state === 'deleting');
      if (busyBinding) throw concurrencyError(`Service binding ${busyBinding.id} is being ${busyBinding.state === 'creating' ? 'created' : 'deleted'}.`);
      // A restart would cut the dump off halfway.
      const backup = await backups?.runningBackup(instanceId);
      if (backup) throw conflict(`Backup ${backup} of this instance is still in progress; restart once it has ended.`);
      const operation = runner.create('restart', instanceId, 'Restart requested.');
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () => store.putInstance({ ...instance, lastOperationId: operation.id, updatedAt: now() }));
      log.info({ instanceId, operation: operation.id }, 'restarting an instance');
      runner.launch(operation, (signal) => this.run(operation, signal));
      return { operation: operation.id };
    });
  }

  /** Runs, or runs again after a takeover, a restart to its end: running and accepting a login, or failed. */
  async run(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const { store, runner, runtime, offerings, log } = this.parts;
    const instance = await store.getInstance(operation.instanceId);
    if (!instance || instance.lastOperationId !== operation.id || !restartsInstances(runtime)) {
      return runner.finish(operation, 'failed', 'Restart failed: the instance record is missing or another operation took it over.');
    }
    const definition = offerings.definitionOf(instance);
    try {
      await runtime.restartInstance(definition, instance, signal, (description) => runner.progress(operation, description));
      await runner.finishInstance(operation, (current) => current, 'succeeded', 'Restarted: the service runs again and accepts a login.');
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(error);
      log.error({ instanceId: instance.id, operation: operation.id, reason }, 'restart failed');
      // The instance stays ready: the reconciler starts a stopped container again once no operation holds it.
      await runner.finishInstance(operation, (current) => current, 'failed', `Restart failed: ${reason}. The broker keeps trying to start it.`);
    }
  }
}
