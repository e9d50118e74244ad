import type { Logger } from '../log.js';
import type { InstanceRecord, OperationRecord, OperationType } from '../store/records.js';
import type { StateStore } from './contracts.js';
import { newOperationId } from './ids.js';

export type Work = (signal: AbortSignal) => Promise<unknown>;

/** Thrown as an abort reason when a deprovision takes over an instance whose provision is still running. */
export class Cancelled extends Error {}

export const now = () => new Date().toISOString();
export const reasonOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** Work on one resource: the instance, or one binding of it. */
const keyOf = (operation: OperationRecord) => (operation.bindingId ? `${operation.instanceId}/${operation.bindingId}` : operation.instanceId);

interface Running {
  operationId: string;
  controller: AbortController;
  done: Promise<void>;
}

/**
 * Runs operations in the background and records their progress and outcome. One operation runs at a time per
 * resource: a new one waits for the previous one on the same resource to let go.
 */
export class OperationRunner {
  private readonly running = new Map<string, Running>();

  constructor(
    private readonly store: StateStore,
    private readonly log: Logger,
  ) {}

  create(type: OperationType, instanceId: string, description: string, bindingId?: string): OperationRecord {
    return { id: newOperationId(), type, instanceId, bindingId, state: 'in progress', description, createdAt: now() };
  }

  /** Starts `work` for a recorded operation; failures it does not handle itself are logged, never thrown. */
  launch(operation: OperationRecord, work: Work): void {
    const key = keyOf(operation);
    const previous = this.running.get(key);
    const controller = new AbortController();
    const done = (async () => {
      if (previous) await previous.done;
      await work(controller.signal);
    })()
      .catch((error: unknown) => this.log.error({ operation: operation.id, reason: reasonOf(error) }, 'operation crashed'))
      .finally(() => {
        if (this.running.get(key)?.operationId === operation.id) this.running.delete(key);
      });
    this.running.set(key, { operationId: operation.id, controller, done });
  }

  /** Asks the work running on the instance itself (not its bindings) to stop. */
  cancel(instanceId: string, reason: string): void {
    this.running.get(instanceId)?.controller.abort(new Cancelled(reason));
  }

  /** Waits until nothing runs; used at shutdown and by tests. */
  async settle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()].map((running) => running.done));
  }

  async progress(operation: OperationRecord, description: string): Promise<void> {
    operation.description = description;
    await this.store.putOperation(operation);
  }

  async finish(operation: OperationRecord, state: 'succeeded' | 'failed', description: string, extra: Partial<OperationRecord> = {}): Promise<void> {
    Object.assign(operation, { state, description, finishedAt: now(), ...extra });
    await this.store.putOperation(operation);
  }

  /**
   * Ends an instance operation and changes the instance record with it, under the instance lock, and only while
   * this operation still owns the record: a deprovision that took over must not get a stale copy written back.
   */
  async finishInstance(
    operation: OperationRecord,
    change: (current: InstanceRecord) => InstanceRecord,
    state: 'succeeded' | 'failed',
    description: string,
    extra: Partial<OperationRecord> = {},
  ): Promise<void> {
    await this.store.withLock(
      operation.instanceId,
      async () => {
        const current = await this.store.getInstance(operation.instanceId);
        if (current && current.lastOperationId === operation.id) await this.store.putInstance({ ...change(current), updatedAt: now() });
        await this.finish(operation, state, description, extra);
      },
      60_000,
    );
  }
}
