import type { ContainerSummary } from '../docker/types.js';
import type { Logger } from '../log.js';
import { LockTimeoutError } from '../store/errors.js';
import type { DriftCause, HealthRecord, InstanceRecord } from '../store/records.js';
import type { DriftRuntime, StateStore } from './contracts.js';
import type { Offerings } from './offerings.js';
import { reasonOf } from './operations.js';

/** Events come in bursts (kill, die, stop): the instance is looked at once they have settled. */
const EVENT_SETTLE_MS = 300;
/** A container being removed is looked at again after this. */
const REMOVING_RECHECK_MS = 1_000;
/** How long a process waits for another process's look at the same instance before leaving it to that one. */
const RECONCILE_LOCK_WAIT_MS = 500;
/** How long a repair waits for a request that holds the instance; then it tries again a little later. */
const INSTANCE_LOCK_WAIT_MS = 2_000;
const BUSY_RETRY_MS = 2_000;
const BUSY_RETRIES = 10;

export interface ReconcilerSettings {
  /** Pause between two passes over every ready instance; the first pass runs at start. */
  intervalMs: number;
}

/** Counts for the metrics: ready instances by what the engine really runs, and the drift this process handled. */
export interface DriftSnapshot {
  /** Ready instances as last looked at: `repaired` ones run again after the broker brought them back. */
  instances: { running: number; down: number; repaired: number };
  /** Since this process started; each drift is counted by the one process that handled it. */
  drift: { detected: number; restarted: number; recreated: number; repairFailed: number; volumeMissing: number };
  lastPassAt?: string;
}

/** What a look at a ready instance with no operation in progress found, and what to do about it. */
export type Finding =
  | { kind: 'running'; since: string }
  /** Down, and not for the broker to act on: reported only. */
  | { kind: 'report'; since: string; reason: string; cause: Exclude<DriftCause, 'stopped' | 'removed'> }
  | { kind: 'restart'; since: string; reason: string; cause: 'stopped' }
  | { kind: 'recreate'; since: string; reason: string; cause: 'removed' };

/** Times as operators read them: UTC, to the second. */
export const utc = (time: string | number | Date = Date.now()) => new Date(time).toISOString().replace(/\.\d+Z$/, 'Z');

const validTime = (time: string | undefined) => (time && !time.startsWith('0001') && !Number.isNaN(Date.parse(time)) ? utc(time) : undefined);

/** Why a container that exists is not running, in words an operator understands. */
function whyStopped(container: ContainerSummary): string {
  if (container.status === 'created') return 'container created but never started';
  if (container.status === 'dead') return 'container is dead (the engine could not stop or remove it cleanly)';
  const code = container.exitCode ?? 0;
  const how = container.oomKilled
    ? "out of memory: killed for using more than the plan's memory"
    : code === 137
      ? 'killed'
      : code === 143 || code === 0
        ? 'stopped'
        : code > 128
          ? `ended by signal ${code - 128}`
          : 'the service failed';
  return `container exited with code ${code} (${how})${container.error ? `: ${container.error}` : ''}`;
}

/**
 * The decision for one ready instance with no operation in progress, from what the engine says. `volumePresent` is
 * only asked for when the container does not run. A missing volume is never recreated: that would hide data loss.
 */
export async function assess(
  instance: InstanceRecord,
  catalogVersion: string | undefined,
  container: ContainerSummary | undefined,
  volumePresent: () => Promise<boolean>,
  now = utc(),
): Promise<Finding> {
  if (container?.running && container.status !== 'paused') return { kind: 'running', since: validTime(container.startedAt) ?? now };
  if (container?.status === 'paused') {
    return { kind: 'report', since: now, reason: `container paused; \`docker unpause ${container.name}\` resumes it`, cause: 'paused' };
  }
  if (container?.status === 'restarting') {
    return {
      kind: 'report',
      since: validTime(container.finishedAt) ?? now,
      reason: `${whyStopped(container)}; the engine is restarting it`,
      cause: 'restarting',
    };
  }
  // On Swarm: the instance's node is down. Its volume is there, so nothing is made again elsewhere; it returns with the node.
  if (container?.status === 'unreachable') {
    return { kind: 'report', since: validTime(container.finishedAt) ?? now, reason: container.error ?? 'its node is unreachable', cause: 'node-down' };
  }
  if (container?.status === 'removing') return { kind: 'report', since: now, reason: 'container being removed', cause: 'removing' };
  if (!(await volumePresent())) {
    return {
      kind: 'report',
      since: validTime(container?.finishedAt) ?? now,
      reason: `data volume missing (${instance.volumeName}): the instance's data is gone; deprovision and provision again, or restore the volume`,
      cause: 'volume-missing',
    };
  }
  if (container) return { kind: 'restart', since: validTime(container.finishedAt) ?? now, reason: whyStopped(container), cause: 'stopped' };
  if (catalogVersion !== undefined && catalogVersion !== instance.maintenanceVersion) {
    return {
      kind: 'report',
      since: now,
      reason:
        `container removed; it cannot be made again on version ${instance.maintenanceVersion}, which the catalog no longer has: ` +
        `upgrade the instance to ${catalogVersion} (an update with that maintenance_info.version)`,
      cause: 'version-gone',
    };
  }
  return { kind: 'recreate', since: now, reason: 'container removed (the data volume is still there)', cause: 'removed' };
}

/** One line for people: "down since …: …; restarted by the broker at …". */
export function describeHealth(health: HealthRecord): string {
  if (health.state === 'down') return `down since ${health.since}: ${health.reason ?? 'unknown reason'}`;
  if (health.state === 'repaired') {
    const how = health.repair === 'recreated' ? 'recreated from its data volume' : 'restarted';
    return `down since ${health.since}: ${health.reason ?? 'unknown reason'}; ${how} by the broker at ${health.repairedAt ?? health.since}`;
  }
  return `running since ${health.since}${health.reason ? ` (${health.reason})` : ''}`;
}

export interface ReconcilerParts {
  store: StateStore;
  runtime: DriftRuntime;
  offerings: Offerings;
  log: Logger;
}

type Look = { eligible: false } | { eligible: true; instance: InstanceRecord; finding: Finding };

/**
 * Keeps what the engine runs in line with the store, which says what should exist. It follows the engine's events
 * for this broker's instance containers and passes over every ready instance every `intervalMs` (once at start), to
 * catch what the events missed. A ready instance with no operation in progress whose container stopped is started
 * again, one whose container is gone is made again from its data volume; a missing volume, or a start that fails,
 * is reported. No OSB operation is made for this; each look holds a lock of its own in the store, so several
 * processes of one broker act once, and the instance's lock while it repairs, so no request changes it meanwhile.
 */
export class Reconciler {
  private readonly stopping = new AbortController();
  private readonly states = new Map<string, HealthRecord['state']>();
  private readonly counters: DriftSnapshot['drift'] = { detected: 0, restarted: 0, recreated: 0, repairFailed: 0, volumeMissing: 0 };
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly busyRetries = new Map<string, number>();
  private passTimer?: NodeJS.Timeout;
  private currentPass?: Promise<void>;
  private watching?: Promise<void>;
  private lastPassAt?: string;
  private lastDisconnectLog = 0;

  constructor(
    private readonly parts: ReconcilerParts,
    private readonly settings: ReconcilerSettings,
  ) {}

  /** Follows the engine's events and runs a pass now and then every interval. */
  start(): void {
    const { runtime, log } = this.parts;
    this.watching = runtime
      .watch(
        (event) => this.soon(event.instanceId, EVENT_SETTLE_MS),
        this.stopping.signal,
        (reason) => {
          // While the engine is away this repeats every few seconds: one line a minute is enough.
          if (Date.now() - this.lastDisconnectLog < 60_000) return;
          this.lastDisconnectLog = Date.now();
          log.warn({ reason }, 'lost the Docker event stream; connecting again (the periodic pass covers the gap)');
        },
      )
      .catch((error: unknown) => log.error({ reason: reasonOf(error) }, 'following Docker events failed; only the periodic pass reconciles now'));
    this.schedulePass(0);
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    clearTimeout(this.passTimer);
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    await Promise.allSettled([this.watching, this.currentPass, ...this.inFlight.values()]);
  }

  /** For the metrics: instances by real state (as last looked at) and the drift this process handled. */
  snapshot(): DriftSnapshot {
    const instances = { running: 0, down: 0, repaired: 0 };
    for (const state of this.states.values()) instances[state]++;
    return { instances, drift: { ...this.counters }, ...(this.lastPassAt ? { lastPassAt: this.lastPassAt } : {}) };
  }

  /** Per ready instance id, its real state as last looked at: `running`, `down` or `repaired`. */
  healthByInstance(): ReadonlyMap<string, string> {
    return new Map(this.states);
  }

  /** Looks at every ready instance once. */
  async pass(): Promise<void> {
    const instances = await this.parts.store.listInstances();
    const ready = new Set(instances.filter((instance) => instance.state === 'ready').map((instance) => instance.id));
    for (const id of this.states.keys()) if (!ready.has(id)) this.states.delete(id);
    for (const id of ready) {
      if (this.stopping.signal.aborted) return;
      await this.check(id);
    }
    this.lastPassAt = utc();
  }

  /** Looks at one instance (and repairs it if need be); a look already under way runs once more afterwards. */
  check(instanceId: string): Promise<void> {
    if (this.stopping.signal.aborted) return Promise.resolve();
    const running = this.inFlight.get(instanceId);
    if (running) {
      this.again.add(instanceId);
      return running;
    }
    const done = (async () => {
      do {
        this.again.delete(instanceId);
        await this.examine(instanceId);
      } while (this.again.has(instanceId) && !this.stopping.signal.aborted);
    })()
      .catch((error: unknown) => this.parts.log.warn({ instanceId, reason: reasonOf(error) }, 'could not compare the instance with the engine'))
      .finally(() => this.inFlight.delete(instanceId));
    this.inFlight.set(instanceId, done);
    return done;
  }

  private schedulePass(delayMs: number): void {
    if (this.stopping.signal.aborted) return;
    this.passTimer = setTimeout(() => {
      this.currentPass = this.pass()
        .catch((error: unknown) => this.parts.log.warn({ reason: reasonOf(error) }, 'reconcile pass failed; trying again at the next one'))
        .finally(() => this.schedulePass(this.settings.intervalMs));
    }, delayMs);
    this.passTimer.unref();
  }

  /** A look at the instance after `delayMs`; a newer request for the same instance replaces an older one. */
  private soon(instanceId: string, delayMs: number): void {
    if (this.stopping.signal.aborted) return;
    clearTimeout(this.timers.get(instanceId));
    const timer = setTimeout(() => {
      this.timers.delete(instanceId);
      void this.check(instanceId);
    }, delayMs);
    timer.unref();
    this.timers.set(instanceId, timer);
  }

  private async examine(instanceId: string): Promise<void> {
    const { store } = this.parts;
    try {
      await store.withLock(`reconcile:${instanceId}`, () => this.lookAndAct(instanceId), RECONCILE_LOCK_WAIT_MS);
    } catch (error) {
      // Another process of this broker is looking at this instance right now: it acts, this one does not.
      if (!(error instanceof LockTimeoutError)) throw error;
    }
  }

  private async lookAndAct(instanceId: string): Promise<void> {
    const { store } = this.parts;
    const first = await this.look(instanceId);
    if (!first.eligible) return;
    const health = await store.getHealth(instanceId);
    if (first.finding.kind === 'running' && health?.state !== 'down') {
      this.states.set(instanceId, health?.state ?? 'running');
      return;
    }
    // Something to record or repair: under the instance's lock, so no request changes the instance meanwhile.
    try {
      await store.withLock(instanceId, () => this.act(instanceId), INSTANCE_LOCK_WAIT_MS);
      this.busyRetries.delete(instanceId);
    } catch (error) {
      if (!(error instanceof LockTimeoutError)) throw error;
      const retries = (this.busyRetries.get(instanceId) ?? 0) + 1;
      this.busyRetries.set(instanceId, retries);
      if (retries <= BUSY_RETRIES) this.soon(instanceId, BUSY_RETRY_MS);
      else this.busyRetries.delete(instanceId); // the periodic pass comes back to it
    }
  }

  /** What to do about a ready instance with no operation in progress; not eligible otherwise. */
  private async look(instanceId: string): Promise<Look> {
    const { store, runtime, offerings } = this.parts;
    const instance = await store.getInstance(instanceId);
    if (!instance || instance.state !== 'ready') {
      this.states.delete(instanceId);
      return { eligible: false };
    }
    const operation = await store.getOperation(instance.lastOperationId);
    if (operation?.state === 'in progress') return { eligible: false };
    const container = await runtime.inspect(instance);
    if (!container?.running || container.status === 'paused') {
      const bindings = await store.listBindings(instanceId);
      if (bindings.some((binding) => binding.state === 'creating' || binding.state === 'deleting')) return { eligible: false };
    }
    let catalogVersion: string | undefined;
    try {
      catalogVersion = offerings.definitionOf(instance).maintenanceInfo.version;
    } catch {
      catalogVersion = undefined;
    }
    return { eligible: true, instance, finding: await assess(instance, catalogVersion, container, () => runtime.volumeExists(instance)) };
  }

  private async act(instanceId: string): Promise<void> {
    const { store, runtime, offerings, log } = this.parts;
    const look = await this.look(instanceId);
    if (!look.eligible) return;
    const { instance, finding } = look;
    const health = await store.getHealth(instanceId);
    const wasDown = health?.state === 'down';
    const record = async (next: HealthRecord) => {
      await store.putHealth(instanceId, next);
      this.states.set(instanceId, next.state);
    };

    if (finding.kind === 'running') {
      if (wasDown) {
        await record({ state: 'running', since: finding.since, reason: `running again; it was down since ${health.since}: ${health.reason}` });
        log.info({ instanceId }, 'the container of the instance runs again');
      } else {
        this.states.set(instanceId, health?.state ?? 'running');
      }
      return;
    }

    // A container on its way out is no finding yet: what follows (gone with or without its volume) decides.
    if (finding.kind === 'report' && finding.cause === 'removing') {
      this.soon(instanceId, REMOVING_RECHECK_MS);
      return;
    }

    // Still down since the first time it was found down.
    const since = wasDown ? health.since : finding.since;
    if (!wasDown) {
      this.counters.detected++;
      if (finding.cause === 'volume-missing') this.counters.volumeMissing++;
      log.warn({ instanceId, container: instance.containerName, reason: finding.reason }, 'the instance is down');
    }
    if (finding.kind === 'report') {
      if (!wasDown || health.reason !== finding.reason) await record({ state: 'down', since, reason: finding.reason, cause: finding.cause });
      else this.states.set(instanceId, 'down');
      return;
    }

    await record({ state: 'down', since, reason: finding.reason, cause: finding.cause });
    const signal = this.stopping.signal;
    const progress = async (description: string) => {
      log.debug({ instanceId, description }, 'repairing');
    };
    try {
      const definition = offerings.definitionOf(instance);
      if (finding.kind === 'restart') await runtime.restart(definition, instance, signal, progress);
      else await runtime.start(definition, instance, signal, progress);
    } catch (error) {
      if (signal.aborted) return;
      const reason = `${finding.reason}; ${finding.kind === 'restart' ? 'starting it again' : 'making it again'} failed: ${reasonOf(error)}`;
      this.counters.repairFailed++;
      await record({ state: 'down', since, reason, cause: finding.cause });
      log.error({ instanceId, container: instance.containerName, reason }, 'could not bring the instance back; trying again at the next pass');
      return;
    }
    const repair = finding.kind === 'restart' ? 'restarted' : 'recreated';
    this.counters[repair]++;
    await record({ state: 'repaired', since, reason: finding.reason, cause: finding.cause, repairedAt: utc(), repair });
    log.info({ instanceId, container: instance.containerName, reason: finding.reason, repair }, 'the instance runs again');
  }
}
