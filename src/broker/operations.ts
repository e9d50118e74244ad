import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from '../log.js';
import { StoreUnavailableError } from '../store/errors.js';
import type { InstanceRecord, OperationRecord, OperationType } from '../store/records.js';
import { waitFor, WaitTimeoutError } from '../wait.js';
import { noOperationObserver, type OperationObserver, type StateStore } from './contracts.js';
import { newOperationId } from './ids.js';

export type Work = (signal: AbortSignal) => Promise<unknown>;

/** Abort reason when a deprovision takes over an instance whose provision is still running: the work fails as cancelled. */
export class Cancelled extends Error {}

/**
 * Abort reason when the work must stop without an outcome (the process shuts down, or lost its lease): the
 * operation stays in progress and whoever holds its lease next continues it.
 */
export class HandBack extends Error {}

/** True when a failure means "stop here and continue later", never "undo and report failed". */
export function mustHandBack(error: unknown, signal: AbortSignal): boolean {
  return error instanceof StoreUnavailableError || error instanceof HandBack || signal.reason instanceof HandBack;
}

export const now = () => new Date().toISOString();
export const reasonOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** How long work that found a TLS renewal of its instance running waits for it before it gives up. */
export const RENEWAL_WAIT_MS = 30_000;

/** Waits (bounded) until the operation is no longer in progress; false when it still is. A store outage is thrown. */
export async function untilEnded(store: Pick<StateStore, 'getOperation'>, operationId: string, timeoutMs: number): Promise<boolean> {
  try {
    return await waitFor(async () => ((await store.getOperation(operationId))?.state === 'in progress' ? undefined : true), { intervalMs: 100, timeoutMs });
  } catch (error) {
    if (error instanceof WaitTimeoutError) return false;
    throw error;
  }
}

/** Instance operations that stop once another one (a deprovision) took their instance over. */
const TAKEN_OVER_BY_DEPROVISION = new Set<OperationType>(['provision', 'update', 'restart', 'tls-renewal']);

/** Work on one resource: the instance, or one binding of it. */
const keyOf = (operation: OperationRecord) => (operation.bindingId ? `${operation.instanceId}/${operation.bindingId}` : operation.instanceId);

export interface RunnerSettings {
  /** How long a lease lives without renewal: a dead process's operations are taken over after about this long. */
  leaseMs: number;
  /** How often every process looks for operations whose lease lapsed. */
  sweepMs: number;
}

interface Running {
  operation: OperationRecord;
  controller: AbortController;
  done: Promise<void>;
  /** Runs inside an HTTP request (a synchronous bind or unbind): a shutdown lets it finish. */
  inline: boolean;
}

/**
 * Runs operations and records their progress and outcome. Operations are owned by leases in the store, not by
 * process memory: the process running one renews its lease; every process sweeps for operations whose lease lapsed
 * and continues them (every step is idempotent). So several processes of one broker share the work, a killed one's
 * operations are finished by another within seconds, and a process started by mistake never takes live work.
 * Within a process one operation runs at a time per resource: a new one waits for the previous one to let go.
 */
export class OperationRunner {
  /** This process, as lease holder. */
  readonly owner = `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  private readonly running = new Map<string, Running>();
  private readonly stopping = new AbortController();
  private workFor?: (operation: OperationRecord) => Work;
  private sweepTimer?: NodeJS.Timeout;

  constructor(
    private readonly store: StateStore,
    private readonly log: Logger,
    private readonly settings: RunnerSettings,
    private readonly observer: OperationObserver = noOperationObserver,
  ) {}

  create(type: OperationType, instanceId: string, description: string, bindingId?: string): OperationRecord {
    return { id: newOperationId(), type, instanceId, bindingId, state: 'in progress', description, createdAt: now() };
  }

  /** Stores a new operation with this process holding its lease, so no sweeper takes it while it starts. */
  async record(operation: OperationRecord): Promise<void> {
    await this.store.claimLease(operation.id, this.owner, this.settings.leaseMs);
    await this.store.putOperation(operation);
    this.observer.operationStarted(operation.type);
  }

  /** Runs a recorded operation in the background; failures it does not handle itself are logged, never thrown. */
  launch(operation: OperationRecord, work: Work): void {
    void this.execute(operation, work, false);
  }

  /** Runs a recorded operation as background work (handed back at shutdown) and returns once it has ended here. */
  runInBackground(operation: OperationRecord, work: Work): Promise<void> {
    return this.execute(operation, work, false);
  }

  /** Runs a recorded operation within the request that started it (synchronous bind and unbind). */
  async runInline<T>(operation: OperationRecord, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    let result: T | undefined;
    let failure: unknown;
    await this.execute(
      operation,
      async (signal) => {
        try {
          result = await work(signal);
        } catch (error) {
          failure = error;
          throw error;
        }
      },
      true,
    );
    if (failure !== undefined) throw failure instanceof Error ? failure : new Error(reasonOf(failure));
    return result as T;
  }

  /** Asks the work running on the instance itself (not its bindings) in this process to stop. */
  cancel(instanceId: string, reason: string): void {
    this.running.get(instanceId)?.controller.abort(new Cancelled(reason));
  }

  /** Waits (bounded) until an operation, wherever it runs, has ended; a deprovision waits so for the provision it cancelled. */
  async waitForEnd(operationId: string): Promise<void> {
    if (!(await untilEnded(this.store, operationId, this.settings.leaseMs * 3))) {
      this.log.warn({ operation: operationId }, 'the cancelled operation did not end in time; going on');
    }
  }

  /** Tells the runner how to continue an operation of each kind (for sweeps and after outages). */
  continueWith(workFor: (operation: OperationRecord) => Work): void {
    this.workFor = workFor;
  }

  /** Sweeps now and then every `sweepMs`, until the shutdown. */
  startSweeping(): void {
    const tick = async () => {
      try {
        await this.sweep();
      } catch (error) {
        // A store outage is logged once by the store; the sweep simply tries again.
        if (!(error instanceof StoreUnavailableError)) this.log.warn({ reason: reasonOf(error) }, 'looking for unfinished operations failed; trying again');
      }
      if (!this.stopping.signal.aborted) this.sweepTimer = setTimeout(() => void tick(), this.settings.sweepMs);
    };
    void tick();
  }

  /** One pass: every active operation nobody holds a lease on is taken and continued here. */
  async sweep(): Promise<number> {
    if (!this.workFor || this.stopping.signal.aborted) return 0;
    const mine = new Set([...this.running.values()].map((running) => running.operation.id));
    let taken = 0;
    for (const id of await this.store.activeOperationIds()) {
      if (mine.has(id) || (await this.store.leaseHeld(id))) continue;
      if (!(await this.store.claimLease(id, this.owner, this.settings.leaseMs))) continue;
      const operation = await this.store.getOperation(id);
      if (!operation || operation.state !== 'in progress') {
        await this.store.forgetActiveOperation(id);
        await this.store.releaseLease(id, this.owner);
        continue;
      }
      this.log.warn(
        { operation: id, type: operation.type, instanceId: operation.instanceId, bindingId: operation.bindingId },
        'continuing an operation nobody holds',
      );
      this.observer.leaseTakenOver(operation.type);
      this.launch(operation, this.workFor(operation));
      taken++;
    }
    return taken;
  }

  /**
   * Shutdown: stops sweeping and hands every background operation back (their leases released, so another
   * process takes them at once); work inside requests goes on, since the server lets those requests finish.
   */
  async handBack(): Promise<void> {
    this.stopping.abort();
    clearTimeout(this.sweepTimer);
    const background = [...this.running.values()].filter((running) => !running.inline);
    for (const running of background) running.controller.abort(new HandBack('the broker is shutting down'));
    await Promise.allSettled(background.map((running) => running.done));
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
    this.observer.operationFinished(operation.type, state, (Date.now() - Date.parse(operation.createdAt)) / 1000);
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

  private async execute(operation: OperationRecord, work: Work, inline: boolean): Promise<void> {
    const key = keyOf(operation);
    const previous = this.running.get(key);
    const controller = new AbortController();
    const done = (async () => {
      // The heartbeat ends before the lease is given up, so a late beat never takes back a released lease.
      const beat = { ended: false, inFlight: Promise.resolve() };
      const timer = setInterval(
        () => {
          beat.inFlight = beat.ended ? beat.inFlight : this.heartbeat(operation, controller);
        },
        Math.max(100, this.settings.leaseMs / 3),
      );
      const endHeartbeat = async () => {
        beat.ended = true;
        clearInterval(timer);
        await beat.inFlight;
      };
      try {
        // Waiting behind the previous operation on this resource is holding this one: its lease is renewed meanwhile.
        if (previous) await previous.done;
        await work(controller.signal);
        await endHeartbeat();
        await this.store.releaseLease(operation.id, this.owner).catch(() => undefined);
      } catch (error) {
        await endHeartbeat();
        await this.stopped(operation, error, controller.signal, inline);
      }
    })().finally(() => {
      if (this.running.get(key)?.operation.id === operation.id) this.running.delete(key);
    });
    this.running.set(key, { operation, controller, done, inline });
    await done;
  }

  /** Renews the lease; stops the work when another process took it, or when a deprovision took over the instance. */
  private async heartbeat(operation: OperationRecord, controller: AbortController): Promise<void> {
    try {
      // Claimed rather than only renewed: a lease that lapsed while this process stalled is still this one's if
      // nobody took it meanwhile.
      if (!(await this.store.claimLease(operation.id, this.owner, this.settings.leaseMs))) {
        controller.abort(new HandBack('another process holds this operation now'));
        return;
      }
      if (TAKEN_OVER_BY_DEPROVISION.has(operation.type)) {
        const instance = await this.store.getInstance(operation.instanceId);
        if (instance && instance.lastOperationId !== operation.id) controller.abort(new Cancelled('a deprovision took over this instance'));
      }
    } catch {
      // The store does not answer: the work notices on its next write and hands the operation back.
    }
  }

  private async stopped(operation: OperationRecord, error: unknown, signal: AbortSignal, inline: boolean): Promise<void> {
    if (error instanceof StoreUnavailableError && !this.stopping.signal.aborted) {
      this.log.warn({ operation: operation.id, type: operation.type }, 'the state store does not answer; the operation continues once it does');
      void this.continueAfterOutage(operation);
      return;
    }
    if (mustHandBack(error, signal)) {
      this.log.info({ operation: operation.id, type: operation.type, reason: reasonOf(signal.reason ?? error) }, 'operation handed back');
      await this.store.releaseLease(operation.id, this.owner).catch(() => undefined);
      return;
    }
    // A synchronous request reports its own failure; background work has nobody else to tell.
    if (!inline) this.log.error({ operation: operation.id, reason: reasonOf(error) }, 'operation crashed');
    await this.store.releaseLease(operation.id, this.owner).catch(() => undefined);
  }

  /** Waits for the store, takes the lease again unless another process did, and continues the operation. */
  private async continueAfterOutage(operation: OperationRecord): Promise<void> {
    const claimed = await waitFor(
      async () => {
        try {
          return await this.store.claimLease(operation.id, this.owner, this.settings.leaseMs);
        } catch {
          return undefined;
        }
      },
      { intervalMs: 500, timeoutMs: Number.POSITIVE_INFINITY, signal: this.stopping.signal },
    ).catch(() => false);
    if (!claimed || !this.workFor) return;
    const current = await this.store.getOperation(operation.id).catch(() => undefined);
    if (current?.state !== 'in progress') {
      await this.store.releaseLease(operation.id, this.owner).catch(() => undefined);
      return;
    }
    this.log.info({ operation: operation.id, type: operation.type }, 'the state store answers again; continuing the operation');
    this.launch(current, this.workFor(current));
  }
}
