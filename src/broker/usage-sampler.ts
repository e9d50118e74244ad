import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { StoreUnavailableError } from '../store/errors.js';
import type { InstanceRecord } from '../store/records.js';
import type { DiskSample, UsageSample } from '../store/usage-history.js';
import type { InstanceContainers } from './contracts.js';
import type { Offerings } from './offerings.js';
import { reasonOf } from './operations.js';
import { PeriodicPass } from './periodic-pass.js';

/** What sampling needs of the state store (the Redis store has it). */
export interface UsageSamplerStore {
  listInstances(): Promise<InstanceRecord[]>;
  claimLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
  usage: {
    pushSample(instanceId: string, sample: UsageSample, keep: number, ttlSeconds: number): Promise<boolean>;
    pushDisk(instanceId: string, sample: DiskSample, keep: number, ttlSeconds: number): Promise<boolean>;
  };
}

export type UsageSettings = Pick<Config, 'usageSampleSeconds' | 'usageDiskSeconds' | 'usageKeepSeconds'>;

/** Instances sampled at the same time: the engine answers a stats call at its next one-second tick, so they wait together. */
const CONCURRENCY = 8;
/** The lease is the sampler's while it renews it each pass; a dead holder's lapses after this many intervals. */
const LEASE_INTERVALS = 3;
const LEASE = 'usage-sampler';
/** du over a large volume takes a while; longer than this and the next measure tries again. */
const DU_TIMEOUT_MS = 60_000;

/** Errors that say the engine (or its socket) is not there, as opposed to one container's trouble. */
const ENGINE_AWAY = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH']);
const engineAway = (error: unknown) => ENGINE_AWAY.has((error as { code?: string }).code ?? '');

/** How many samples cover the kept time at one interval, and how long a list lives once nobody adds to it. */
export function keptCount(keepSeconds: number, everySeconds: number): number {
  return Math.ceil(keepSeconds / everySeconds) + 1;
}

/**
 * Samples every running instance's CPU, memory, network and block I/O totals every BROKER_USAGE_SAMPLE_SECONDS and
 * measures its data volume (du inside the container) every BROKER_USAGE_DISK_SECONDS, into capped lists in the store.
 * One replica samples at a time: the one holding the sampler's lease, renewed each pass; another takes over when it
 * lapses. One instance's failure never stops the others; a store or engine that is away is logged once, not per sample.
 */
export class UsageSampler {
  private readonly periodic = new PeriodicPass(
    () => this.pass(),
    (error) => this.parts.log.warn({ reason: reasonOf(error) }, 'a usage sampling pass failed; the next one tries again'),
  );
  /** When each instance's volume was last measured by this process. */
  private readonly diskMeasuredAt = new Map<string, number>();
  /** Instances whose failure is logged, until they are sampled again. */
  private readonly failing = new Set<string>();
  private storeAway = false;
  private engineAway = false;

  constructor(
    private readonly parts: {
      store: UsageSamplerStore;
      containers: InstanceContainers;
      offerings: Offerings;
      log: Logger;
      /** This process, as the holder of the sampler's lease. */
      owner: string;
      settings: UsageSettings;
    },
  ) {}

  start(): void {
    this.periodic.start(this.parts.settings.usageSampleSeconds * 1000, { now: true });
  }

  stop(): Promise<void> {
    return this.periodic.stop();
  }

  /** One pass over every ready instance, when this process holds (or takes) the sampler's lease. */
  async pass(now = Date.now()): Promise<void> {
    const { store, owner, settings, log } = this.parts;
    let ready: InstanceRecord[];
    try {
      ready = (await store.listInstances()).filter((instance) => instance.state === 'ready');
      if (ready.length === 0) return;
      if (!(await store.claimLease(LEASE, owner, LEASE_INTERVALS * settings.usageSampleSeconds * 1000))) return;
    } catch (error) {
      this.storeIsAway(error);
      return;
    }
    if (this.storeAway) log.info('usage sampling resumes: the state store answers again');
    this.storeAway = false;
    const queue = [...ready];
    const worker = async () => {
      for (let instance = queue.shift(); instance; instance = queue.shift()) await this.sampleOne(instance, now);
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, ready.length) }, worker));
    for (const id of this.diskMeasuredAt.keys()) if (!ready.some((instance) => instance.id === id)) this.diskMeasuredAt.delete(id);
  }

  private storeIsAway(error: unknown): void {
    if (!this.storeAway) this.parts.log.warn({ reason: reasonOf(error) }, 'usage sampling waits: the state store does not answer');
    this.storeAway = true;
  }

  private async sampleOne(instance: InstanceRecord, passStartedAt: number): Promise<void> {
    const { store, containers, offerings, settings, log } = this.parts;
    const keepSeconds = settings.usageKeepSeconds;
    try {
      const target = await containers.locate(instance);
      const counters = await target.engine.usageCounters(target.container);
      if (this.engineAway) log.info('usage sampling resumes: the Docker engine answers again');
      this.engineAway = false;
      // Not running: no sample, so the charts show the gap and the dashboard says when the last one was taken.
      if (!counters) return;
      await store.usage.pushSample(instance.id, { at: Date.now(), ...counters }, keptCount(keepSeconds, settings.usageSampleSeconds), keepSeconds);
      const measured = this.diskMeasuredAt.get(instance.id);
      if (measured === undefined || passStartedAt - measured >= settings.usageDiskSeconds * 1000) {
        this.diskMeasuredAt.set(instance.id, passStartedAt);
        const definition = offerings.definitionOf(instance);
        const usedBytes = await volumeBytes(target, definition.container.dataPath, definition.container.execUser);
        await store.usage.pushDisk(instance.id, { at: Date.now(), usedBytes }, keptCount(keepSeconds, settings.usageDiskSeconds), keepSeconds);
      }
      if (this.failing.delete(instance.id)) log.info({ instanceId: instance.id }, 'the instance’s usage is sampled again');
    } catch (error) {
      if (error instanceof StoreUnavailableError) return this.storeIsAway(error);
      if (engineAway(error)) {
        if (!this.engineAway) log.warn({ reason: reasonOf(error) }, 'usage sampling waits: the Docker engine does not answer');
        this.engineAway = true;
        return;
      }
      if (!this.failing.has(instance.id))
        log.warn({ instanceId: instance.id, reason: reasonOf(error) }, 'could not sample the instance’s usage; trying again each pass');
      this.failing.add(instance.id);
    }
  }
}

/**
 * Bytes the data folder takes on disk, by du in the container as the engine's own user (it owns the data; the
 * containers drop every capability, so root could not read it). Cheaper than the engine's /system/df, which sizes
 * every image, container and volume of the host for one answer.
 */
async function volumeBytes(target: Awaited<ReturnType<InstanceContainers['locate']>>, dataPath: string, user?: string): Promise<number> {
  const result = await target.engine.exec(target.container, ['du', '-s', '-x', '-B1', dataPath], { user, timeoutMs: DU_TIMEOUT_MS });
  // A file that vanishes while du runs makes it exit 1 with its total still printed.
  const bytes = Number(/^(\d+)\s/.exec(result.stdout)?.[1]);
  if (!Number.isFinite(bytes)) throw new Error(`du failed (exit code ${result.exitCode}): ${result.stderr.trim().slice(0, 200)}`);
  return bytes;
}
