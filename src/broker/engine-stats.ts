import type { ServiceDefinition } from '../catalog/definition.js';
import { parseStatsOutput } from '../catalog/stats.js';
import type { Logger } from '../log.js';
import type { EngineStatsRecord, InstanceRecord } from '../store/records.js';
import type { InstanceContainers } from './contracts.js';
import { reasonOf } from './operations.js';
import { PeriodicPass } from './periodic-pass.js';
import { InstanceScripts } from './scripts.js';

/** A stats script gets this long: it is a few cheap queries, and a page and a collection pass wait for it. */
export const STATS_TIMEOUT_SECONDS = 5;
/** A dashboard reading is shared by every viewer of the instance for this long, so viewers do not multiply execs. */
const READING_SHARED_MS = 5000;
/** Instances measured at the same time in one collection pass. */
const PASS_CONCURRENCY = 4;
/** A stored reading outlives this many collection intervals only when nobody collects any more. */
const STALE_AFTER_INTERVALS = 3;

export type EngineStatsReading = Omit<EngineStatsRecord, 'expiresAt'>;

/** What the collection needs of the state store (the Redis store has it). */
export interface EngineStatsStore {
  listInstances(): Promise<InstanceRecord[]>;
  claimLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
  setEngineStats(instanceId: string, record: EngineStatsRecord): Promise<void>;
  engineStats(): Promise<Map<string, EngineStatsRecord>>;
  forgetEngineStats(instanceIds: string[]): Promise<void>;
}

export interface EngineStatsParts {
  store: EngineStatsStore;
  containers: InstanceContainers;
  definitions: ServiceDefinition[];
  log: Logger;
  /** This process, as the holder of a collection pass's lease. */
  owner: string;
  /** BROKER_ENGINE_STATS_SECONDS in ms: how often one replica collects every instance's numbers; 0 turns it off. */
  intervalMs: number;
}

/**
 * Runs offerings' scripts/stats in instances' containers: on request for the dashboard (a reading shared for a few
 * seconds), and in a periodic pass, one replica at a time, whose readings go to the store for every replica's /metrics.
 * A script that fails or overruns gives no numbers and the reason.
 */
export class EngineStats {
  private readonly scripts = new InstanceScripts({ scriptTimeoutSeconds: STATS_TIMEOUT_SECONDS });
  private readonly definitions: Map<string, ServiceDefinition>;
  private readonly shared = new Map<string, { at: number; reading: Promise<EngineStatsReading> }>();
  private readonly periodic = new PeriodicPass(
    () => this.pass(),
    (error) => this.parts.log.warn({ reason: reasonOf(error) }, 'engine stats collection failed'),
  );

  constructor(private readonly parts: EngineStatsParts) {
    this.definitions = new Map(parts.definitions.map((definition) => [definition.offering.id, definition]));
  }

  definitionOf(instance: Pick<InstanceRecord, 'serviceId'>): ServiceDefinition | undefined {
    return this.definitions.get(instance.serviceId);
  }

  /** The instance's offering when it declares stats, else undefined. */
  declared(instance: Pick<InstanceRecord, 'serviceId'>): ServiceDefinition | undefined {
    const definition = this.definitions.get(instance.serviceId);
    return definition?.stats?.length ? definition : undefined;
  }

  /** The instance's numbers now, or from a run that started less than a few seconds ago (for the dashboard). */
  read(instance: InstanceRecord): Promise<EngineStatsReading> {
    const now = Date.now();
    for (const [id, entry] of this.shared) if (now - entry.at >= READING_SHARED_MS) this.shared.delete(id);
    const recent = this.shared.get(instance.id);
    if (recent) return recent.reading;
    const reading = this.measure(instance);
    this.shared.set(instance.id, { at: now, reading });
    return reading;
  }

  /** Runs the stats script once; never throws: a failure is the reading's `error`. */
  async measure(instance: InstanceRecord): Promise<EngineStatsReading> {
    const at = new Date().toISOString();
    const definition = this.declared(instance);
    if (!definition) return { at, error: 'this offering reports no engine numbers' };
    if (instance.state !== 'ready') return { at, error: `the instance is ${instance.state}` };
    try {
      const target = await this.parts.containers.locate(instance);
      const container = await target.engine.inspectContainer(target.container);
      if (!container?.running) return { at, error: `the container is ${container?.status ?? 'missing'}, so the engine cannot be asked` };
      // The script's own `timeout` stops it; the signal only guards against an exec that never comes back.
      const signal = AbortSignal.timeout((STATS_TIMEOUT_SECONDS + 2) * 1000);
      const output = await this.scripts.run(target, definition, instance, 'stats', {}, signal);
      return { at, values: parseStatsOutput(output.trim(), definition.stats!) };
    } catch (error) {
      const reason = reasonOf(error);
      // coreutils' timeout in a container made from an image that predates the script.
      if (/failed to run command .\/osb\/stats.: No such file/.test(reason)) {
        return { at, error: "the instance's container was made from an image without the stats script; an upgrade of the instance brings it" };
      }
      return { at, error: reason };
    }
  }

  start(): void {
    this.periodic.start(this.parts.intervalMs, { now: true });
  }

  stop(): Promise<void> {
    return this.periodic.stop();
  }

  /**
   * One collection: the replica that claims this interval's lease measures every ready instance whose offering has
   * stats and stores the readings; readings of instances that are gone are dropped. Returns false without the lease.
   */
  async pass(): Promise<boolean> {
    const { store, owner, intervalMs } = this.parts;
    const window = Math.floor(Date.now() / intervalMs);
    if (!(await store.claimLease(`engine-stats-${window}`, owner, 2 * intervalMs))) return false;
    const instances = (await store.listInstances()).filter((instance) => instance.state === 'ready' && this.declared(instance));
    const queue = [...instances];
    const worker = async () => {
      for (let instance = queue.shift(); instance; instance = queue.shift()) {
        const reading = await this.measure(instance);
        const expiresAt = new Date(Date.parse(reading.at) + STALE_AFTER_INTERVALS * intervalMs).toISOString();
        await store.setEngineStats(instance.id, { ...reading, expiresAt });
      }
    };
    await Promise.all(Array.from({ length: Math.min(PASS_CONCURRENCY, queue.length) }, worker));
    const live = new Set(instances.map((instance) => instance.id));
    await store.forgetEngineStats([...(await store.engineStats()).keys()].filter((id) => !live.has(id)));
    return true;
  }
}
