import type { InstanceRecord, OperationRecord } from '../store/records.js';
import type { StoredCertificate } from '../tls/certificates.js';
import { afterFirstWrite, locked, type LifecycleParts } from './lifecycle-parts.js';
import { mustHandBack, now, reasonOf } from './operations.js';

/** Renews one instance's certificate and has its engine serve it (InstanceTls.renew). */
export interface CertificateRenewer {
  renew(instance: InstanceRecord, options: { signal: AbortSignal }): Promise<StoredCertificate | undefined>;
}

/**
 * Runs each certificate renewal as an instance operation: on Swarm a renewal replaces the task, and even on one engine
 * the engine reloads (Memcached restarts), so nothing else may work on the instance meanwhile. As an operation it is
 * locked against the others (a deprovision takes it over and waits for it; an update or bind gets ConcurrencyError),
 * leased, continued by another process when its own dies, and left alone by the reconciler.
 */
export class TlsRenewals {
  constructor(private readonly parts: LifecycleParts & { renewer: CertificateRenewer }) {}

  /**
   * Renews the instance's certificate as an operation and waits for its end. False when the instance is busy (not
   * ready, an operation, a binding change or a backup in progress): the next renewal pass tries again.
   */
  async renew(instanceId: string): Promise<boolean> {
    const { store, runner, backups, log } = this.parts;
    const operation = await locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      if (!instance || instance.state !== 'ready') return undefined;
      if ((await store.getOperation(instance.lastOperationId))?.state === 'in progress') return undefined;
      if ((await store.listBindings(instanceId)).some((binding) => binding.state === 'creating' || binding.state === 'deleting')) return undefined;
      // On Swarm the task is replaced, which would cut a dump off halfway.
      if (await backups?.runningBackup(instanceId)) return undefined;
      const operation = runner.create('tls-renewal', instanceId, 'Renewing the TLS certificate.');
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () => store.putInstance({ ...instance, lastOperationId: operation.id, updatedAt: now() }));
      return operation;
    });
    if (!operation) {
      log.debug({ instanceId }, 'the instance is busy; its TLS renewal waits for the next pass');
      return false;
    }
    await runner.runInBackground(operation, (signal) => this.run(operation, signal));
    return (await store.getOperation(operation.id))?.state === 'succeeded';
  }

  /** Runs, or runs again after a takeover, a renewal to its end: the engine serves the new certificate, or failed. */
  async run(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const { store, runner, log, renewer } = this.parts;
    const instance = await store.getInstance(operation.instanceId);
    if (!instance || instance.lastOperationId !== operation.id) {
      return runner.finish(operation, 'failed', 'TLS renewal failed: the instance record is missing or another operation took it over.');
    }
    try {
      const renewed = await renewer.renew(instance, { signal });
      const until = renewed ? `; it is valid until ${renewed.notAfter}` : '';
      await runner.finishInstance(operation, (current) => current, 'succeeded', `Renewed the TLS certificate${until}.`);
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(signal.reason ?? error);
      log.warn({ instanceId: instance.id, operation: operation.id, reason }, 'could not renew the instance’s TLS certificate');
      // The new certificate stays stored as pending: the next pass delivers it, and a new container gets it anyway.
      await runner.finishInstance(operation, (current) => current, 'failed', `TLS renewal failed: ${reason}. The next renewal pass tries again.`);
    }
  }
}
