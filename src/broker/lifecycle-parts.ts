import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { concurrencyError, notFound } from '../osb/errors.js';
import type { LastOperation } from '../osb/types.js';
import { LockTimeoutError } from '../store/errors.js';
import type { OperationRecord } from '../store/records.js';
import type { InstanceRuntime, Placement, PortProbe, StateStore } from './contracts.js';
import type { Offerings } from './offerings.js';
import type { BackupService } from './backups.js';
import type { LinkedInstance } from './dashboard-link.js';
import { reasonOf, RENEWAL_WAIT_MS, untilEnded, type OperationRunner } from './operations.js';

/** What the instance and binding lifecycles are built from. */
export interface LifecycleParts {
  config: Pick<Config, 'brokerId' | 'portRange' | 'advertisedHost'>;
  offerings: Offerings;
  store: StateStore;
  runtime: InstanceRuntime;
  runner: OperationRunner;
  log: Logger;
  /** Whether nothing on this host listens on a port, before it is reserved. */
  portIsFree: PortProbe;
  /** The dashboard URL the platform keeps for the instance (src/dashboard/links.ts). */
  dashboardUrl: (instance: LinkedInstance) => string;
  /** On Swarm: where new instances may go. Without it, everything runs on the one engine. */
  placement?: Placement;
  /** Backups (restore_from at provision); without it, restore_from is refused. */
  backups?: BackupService;
  /** The broker's CA, for the credentials of TLS offerings; without it (no TLS delivery), they carry none. */
  tls?: { caCertificate(): string };
}

/** Thrown by `locked` work that found a TLS renewal of its instance running, before it wrote anything. */
class RenewalRunning extends Error {
  constructor(readonly operationId: string) {
    super('a TLS renewal of this service instance is in progress');
  }
}

/**
 * What a request that finds another operation running on its instance throws: ConcurrencyError, except for a TLS
 * renewal, which nobody asked for and which ends in a moment (seconds on Swarm), so `locked` waits for it.
 */
export function busyWith(operation: OperationRecord): Error {
  return operation.type === 'tls-renewal' ? new RenewalRunning(operation.id) : concurrencyError();
}

/**
 * Runs a request's read-check-write under the instance lock; a lock held too long is the spec's ConcurrencyError. Work
 * that found a TLS renewal running (`busyWith`) runs once more after the renewal's end, outside the lock meanwhile.
 */
export async function locked<T>(store: StateStore, instanceId: string, work: () => Promise<T>): Promise<T> {
  try {
    return await lockedOnce(store, instanceId, work);
  } catch (error) {
    if (!(error instanceof RenewalRunning)) throw error;
    if (!(await untilEnded(store, error.operationId, RENEWAL_WAIT_MS)))
      throw concurrencyError('A TLS certificate renewal of this service instance is in progress.');
  }
  try {
    return await lockedOnce(store, instanceId, work);
  } catch (error) {
    if (error instanceof RenewalRunning) throw concurrencyError('A TLS certificate renewal of this service instance is in progress.');
    throw error;
  }
}

async function lockedOnce<T>(store: StateStore, instanceId: string, work: () => Promise<T>): Promise<T> {
  try {
    return await store.withLock(instanceId, work);
  } catch (error) {
    if (error instanceof LockTimeoutError) throw concurrencyError();
    throw error;
  }
}

/**
 * Runs a write that follows an operation's first record (the instance or binding that points to it). Should it
 * fail, the operation is ended as failed rather than left in progress with nothing pointing to it.
 */
export async function afterFirstWrite(runner: OperationRunner, operation: OperationRecord, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (error) {
    await runner.finish(operation, 'failed', `The request could not be recorded: ${reasonOf(error)}`).catch(() => undefined);
    throw error;
  }
}

/**
 * The operation last_operation reports: the requested one if it belongs to this instance (or this binding of it),
 * else the latest one. One store round trip when it does, since platforms poll this.
 */
export async function operationFor(
  store: StateStore,
  instanceId: string,
  bindingId: string | undefined,
  requestedId: string | undefined,
  missing: string,
): Promise<OperationRecord> {
  if (requestedId) {
    const requested = await store.getOperation(requestedId);
    if (requested && requested.instanceId === instanceId && (requested.bindingId ?? undefined) === bindingId) return requested;
  }
  const latest = await store.latestOperation(instanceId, bindingId);
  if (!latest) throw notFound(missing);
  if (!latest.operation) throw notFound('No operation is known for this resource.');
  return latest.operation;
}

export function toLastOperation(operation: OperationRecord): LastOperation {
  const failedUpdateOrDelete = operation.state === 'failed' && (operation.type === 'update' || operation.type === 'deprovision');
  return {
    state: operation.state,
    description: operation.description,
    ...(failedUpdateOrDelete && operation.instanceUsable !== undefined ? { instance_usable: operation.instanceUsable } : {}),
    ...(failedUpdateOrDelete && operation.type === 'update' && operation.updateRepeatable !== undefined
      ? { update_repeatable: operation.updateRepeatable }
      : {}),
  };
}
