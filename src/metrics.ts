import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import type { BackupObserver, OperationObserver, OperationOutcome } from './broker/contracts.js';
import type { ServiceDefinition } from './catalog/definition.js';
import { within, type DependencyChecks, type Readiness } from './health.js';
import type { BackupOrigin, EngineStatsRecord, InstanceRecord, OperationType } from './store/records.js';

/** Per instance id, when its last backup succeeded (seconds since the epoch), wherever it was made. */
export type BackupLastSuccessSource = () => Promise<ReadonlyMap<string, number>>;

/** Per instance id, the last engine stats reading a collection pass stored (any replica's). */
export type EngineStatsSource = () => Promise<ReadonlyMap<string, EngineStatsRecord>>;

/** Per instance id, the bytes its data volume took when last measured; instances not measured yet are absent. */
export type DiskUsageSource = (instanceIds: string[]) => Promise<ReadonlyMap<string, number>>;

/** Per instance id, the health a reconciler last recorded for it (`ok`, `down`, `repaired`, ...). */
export type InstanceHealthSource = () => Promise<ReadonlyMap<string, string>> | ReadonlyMap<string, string>;

export interface MetricsSources {
  /** The same checks as /readyz, run at each scrape for osb_redis_up and osb_docker_up. */
  checks: DependencyChecks;
  /** The store's instance list, read at each scrape for osb_instances. */
  listInstances: () => Promise<InstanceRecord[]>;
  /** The catalog, to label instances with offering and plan names rather than ids. */
  definitions: ServiceDefinition[];
  /** Optional: health records per instance, counted as osb_instance_health. */
  instancesByHealth?: InstanceHealthSource;
}

const OPERATION_TYPES: OperationType[] = ['provision', 'update', 'deprovision', 'bind', 'unbind', 'restore', 'restart', 'tls-renewal'];
const OUTCOMES: OperationOutcome[] = ['succeeded', 'failed'];
const BACKUP_ORIGINS: BackupOrigin[] = ['manual', 'scheduled', 'import'];
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
/** osb_http_request_duration_seconds's buckets: prom-client's defaults, which it has always had. */
const HTTP_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** One method and route's durations: count, sum and the observations per bucket (not yet cumulative). */
interface Durations {
  labels: { method: string; route: string };
  count: number;
  sum: number;
  perBucket: number[];
}

/** One method, route and status: its count, and the durations it adds to. */
interface RequestSeries {
  count: { labels: { method: string; route: string; status: string }; value: number };
  durations: Durations;
}

/** A metric as the registry reads it (what prom-client's own metrics give it). */
interface CollectedMetric {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  aggregator: 'sum';
  values: Array<{ value: number; labels: Record<string, string | number>; metricName?: string }>;
}

/**
 * osb_http_requests_total and osb_http_request_duration_seconds, counted in plain numbers and turned into what the
 * registry reads only at a scrape: prom-client's own counter and histogram check and hash their labels on every
 * request, which cost as much as answering the catalog. The text a scrape gets is the same, series for series.
 */
class HttpRequestMetrics {
  /** By method, route template and status: bounded sets (templates, not paths), so these maps stay small. */
  private readonly series = new Map<string, Map<string, Map<number, RequestSeries>>>();
  private readonly counts: RequestSeries['count'][] = [];
  private readonly durations = new Map<string, Durations>();

  constructor(registry: Registry) {
    const metric = (name: string, help: string, type: CollectedMetric['type'], values: () => CollectedMetric['values']) => {
      const collected = {
        name,
        help,
        type,
        aggregator: 'sum' as const,
        get: async (): Promise<CollectedMetric> => ({ name: collected.name, help, type, aggregator: 'sum', values: values() }),
        reset: () => this.reset(),
      };
      registry.registerMetric(collected as unknown as Metric);
    };
    metric('osb_http_requests_total', 'HTTP requests answered, by method, route template and status code.', 'counter', () =>
      this.counts.map(({ labels, value }) => ({ value, labels: { ...labels } })),
    );
    metric('osb_http_request_duration_seconds', 'Time from a request arriving to its answer being ready, by method and route template.', 'histogram', () =>
      [...this.durations.values()].flatMap((durations) => this.histogramValues(durations)),
    );
  }

  /** `method` is one of METHODS or "other". */
  observe(method: string, route: string, status: number, seconds: number): void {
    let routes = this.series.get(method);
    if (!routes) this.series.set(method, (routes = new Map<string, Map<number, RequestSeries>>()));
    let statuses = routes.get(route);
    if (!statuses) routes.set(route, (statuses = new Map<number, RequestSeries>()));
    let series = statuses.get(status);
    if (!series) statuses.set(status, (series = this.newSeries(method, route, status)));
    series.count.value++;
    const { durations } = series;
    durations.count++;
    durations.sum += seconds;
    // A duration above the last bucket is in none of them, only in the count (+Inf).
    for (let bucket = 0; bucket < HTTP_DURATION_BUCKETS.length; bucket++) {
      if (seconds <= HTTP_DURATION_BUCKETS[bucket]!) {
        durations.perBucket[bucket]!++;
        break;
      }
    }
  }

  private newSeries(method: string, route: string, status: number): RequestSeries {
    const count = { labels: { method, route, status: String(status) }, value: 0 };
    this.counts.push(count);
    const key = `${method} ${route}`;
    let durations = this.durations.get(key);
    if (!durations) {
      durations = { labels: { method, route }, count: 0, sum: 0, perBucket: HTTP_DURATION_BUCKETS.map(() => 0) };
      this.durations.set(key, durations);
    }
    return { count, durations };
  }

  /** The values prom-client's histogram gives for one series: cumulative buckets, +Inf, sum and count. */
  private histogramValues({ labels, count, sum, perBucket }: Durations): CollectedMetric['values'] {
    const bucketName = 'osb_http_request_duration_seconds_bucket';
    let cumulative = 0;
    return [
      ...HTTP_DURATION_BUCKETS.map((le, bucket) => ({ value: (cumulative += perBucket[bucket]!), labels: { le, ...labels }, metricName: bucketName })),
      { value: count, labels: { le: '+Inf', ...labels }, metricName: bucketName },
      { value: sum, labels: { ...labels }, metricName: 'osb_http_request_duration_seconds_sum' },
      { value: count, labels: { ...labels }, metricName: 'osb_http_request_duration_seconds_count' },
    ];
  }

  private reset(): void {
    this.series.clear();
    this.counts.length = 0;
    this.durations.clear();
  }
}

/** What one scrape reads once and every gauge shares. */
interface Snapshot {
  readiness: Readiness;
  /** Undefined when the store did not answer in time. */
  instances?: InstanceRecord[];
  health?: ReadonlyMap<string, string>;
  backupLastSuccess?: ReadonlyMap<string, number>;
  engineStats?: ReadonlyMap<string, EngineStatsRecord>;
}

/**
 * The broker's Prometheus registry: HTTP requests, operations, backups, instances and the two dependencies, plus the Node
 * process defaults. Counters count from the process start; the instance and dependency gauges are read at scrape.
 */
export class BrokerMetrics implements OperationObserver, BackupObserver {
  readonly registry = new Registry();
  /** Settable after start, once a reconciler that keeps health records exists. */
  instancesByHealth?: InstanceHealthSource;
  /** Settable after start: the data volumes as the usage sampler last measured them. */
  diskUsage?: DiskUsageSource;
  /** Settable after start: the store's last successful backup per instance. */
  backupLastSuccess?: BackupLastSuccessSource;
  /** Settable after start: the stored engine stats readings. */
  engineStats?: EngineStatsSource;

  private readonly http: HttpRequestMetrics;
  private readonly operationsStarted: Counter<'type'>;
  private readonly operationsFinished: Counter<'type' | 'outcome'>;
  private readonly operationDuration: Histogram<'type' | 'outcome'>;
  private readonly leaseTakeovers: Counter<'type'>;
  private readonly backupsEnded: Counter<'origin' | 'outcome'>;
  private snapshot?: Promise<Snapshot>;

  constructor(private readonly sources: MetricsSources) {
    this.instancesByHealth = sources.instancesByHealth;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.http = new HttpRequestMetrics(this.registry);
    this.operationsStarted = new Counter({
      name: 'osb_operations_started_total',
      help: 'Operations whose work this broker process started, by type.',
      labelNames: ['type'],
      registers,
    });
    this.operationsFinished = new Counter({
      name: 'osb_operations_finished_total',
      help: 'Operations this broker process finished, by type and outcome.',
      labelNames: ['type', 'outcome'],
      registers,
    });
    this.operationDuration = new Histogram({
      name: 'osb_operation_duration_seconds',
      help: 'Time from an operation starting to its finished record, by type and outcome.',
      labelNames: ['type', 'outcome'],
      buckets: [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800],
      registers,
    });
    this.leaseTakeovers = new Counter({
      name: 'osb_operation_lease_takeovers_total',
      help: 'Operations this broker process took over after their lease lapsed, by type.',
      labelNames: ['type'],
      registers,
    });
    this.backupsEnded = new Counter({
      name: 'osb_backups_finished_total',
      help: 'Backups this broker process ended, by origin (manual, scheduled, import) and outcome; a scheduled run that could not start counts as failed.',
      labelNames: ['origin', 'outcome'],
      registers,
    });
    for (const origin of BACKUP_ORIGINS) for (const outcome of OUTCOMES) this.backupsEnded.inc({ origin, outcome }, 0);
    // Every series exists from the start, so rates and alerts see zeros rather than nothing.
    for (const type of OPERATION_TYPES) {
      this.operationsStarted.inc({ type }, 0);
      this.leaseTakeovers.inc({ type }, 0);
      for (const outcome of OUTCOMES) this.operationsFinished.inc({ type, outcome }, 0);
    }

    const scrape = () => this.scrapeSnapshot();
    const dependencyGauge = (name: string, dependency: 'redis' | 'docker', what: string) =>
      new Gauge({
        name,
        help: `1 when ${what} answered within ${sources.checks.timeoutMs} ms at this scrape, else 0.`,
        registers,
        async collect() {
          this.set((await scrape()).readiness.checks[dependency] === 'ok' ? 1 : 0);
        },
      });
    dependencyGauge('osb_redis_up', 'redis', 'the state store (Redis)');
    dependencyGauge('osb_docker_up', 'docker', 'the Docker engine');

    const names = this.labelNames();
    new Gauge({
      name: 'osb_instances',
      help: 'Service instances in the store at this scrape, by offering, plan and state (absent when the store does not answer).',
      labelNames: ['offering', 'plan', 'state'],
      registers,
      async collect() {
        const { instances } = await scrape();
        this.reset();
        for (const instance of instances ?? []) this.inc({ ...names(instance), state: instance.state });
      },
    });
    new Gauge({
      name: 'osb_instance_health',
      help: 'Service instances by the health last recorded for them (ok, down, repaired, ...), by offering and plan.',
      labelNames: ['offering', 'plan', 'health'],
      registers,
      async collect() {
        const { instances, health } = await scrape();
        this.reset();
        if (!instances || !health) return;
        for (const instance of instances) {
          const recorded = health.get(instance.id);
          if (recorded !== undefined) this.inc({ ...names(instance), health: recorded });
        }
      },
    });
    // The plan's disk_mb is a soft limit: these two side by side are what an alert on a filling volume compares.
    const diskLimitBytes = (instance: InstanceRecord) =>
      (sources.definitions.find((definition) => definition.offering.id === instance.serviceId)?.limits.get(instance.planId)?.diskMb ?? 0) * 1024 * 1024;
    const readDisk = async (instances: InstanceRecord[]) => {
      const source = this.diskUsage;
      return source ? within(() => source(instances.map((instance) => instance.id)), sources.checks.timeoutMs).catch(() => undefined) : undefined;
    };
    new Gauge({
      name: 'osb_instance_disk_used_bytes',
      help: "Bytes an instance's data volume takes, as last measured (du in its container every BROKER_USAGE_DISK_SECONDS); absent before the first measure.",
      labelNames: ['instance_id', 'offering', 'plan'],
      registers,
      async collect() {
        const { instances } = await scrape();
        this.reset();
        const used = instances && (await readDisk(instances));
        for (const instance of instances ?? []) {
          const bytes = used?.get(instance.id);
          if (bytes !== undefined) this.set({ instance_id: instance.id, ...names(instance) }, bytes);
        }
      },
    });
    new Gauge({
      name: 'osb_instance_disk_limit_bytes',
      help: "The plan's disk_mb of an instance in bytes: a soft limit, reported and never enforced (Docker's local volumes have no quota); absent when the plan sets none.",
      labelNames: ['instance_id', 'offering', 'plan'],
      registers,
      async collect() {
        const { instances } = await scrape();
        this.reset();
        for (const instance of instances ?? []) {
          const bytes = diskLimitBytes(instance);
          if (bytes > 0) this.set({ instance_id: instance.id, ...names(instance) }, bytes);
        }
      },
    });
    new Gauge({
      name: 'osb_backup_last_success_timestamp_seconds',
      help: "When each live instance's last backup succeeded (any origin, any replica), in seconds since the epoch; absent before its first.",
      labelNames: ['instance_id', 'service'],
      registers,
      async collect() {
        const { instances, backupLastSuccess } = await scrape();
        this.reset();
        if (!instances || !backupLastSuccess) return;
        for (const instance of instances) {
          const seconds = backupLastSuccess.get(instance.id);
          if (seconds !== undefined) this.set({ instance_id: instance.id, service: names(instance).offering }, seconds);
        }
      },
    });
    // Readings come from the store (one replica collects); a failed or stale reading has no numbers, only up 0 or nothing.
    const liveReadings = async () => {
      const { instances, engineStats } = await scrape();
      const now = Date.now();
      return (instances ?? []).flatMap((instance) => {
        const reading = engineStats?.get(instance.id);
        return reading && Date.parse(reading.expiresAt) > now ? [{ instance, reading }] : [];
      });
    };
    new Gauge({
      name: 'osb_instance_engine_stat',
      help: "One number of an instance's engine (its offering's stats script: connections, memory, messages, ...), by stat; from the last collection, absent when it failed or is stale.",
      labelNames: ['instance_id', 'offering', 'plan', 'stat'],
      registers,
      async collect() {
        this.reset();
        for (const { instance, reading } of await liveReadings()) {
          for (const [stat, value] of Object.entries(reading.values ?? {})) this.set({ instance_id: instance.id, ...names(instance), stat }, value);
        }
      },
    });
    new Gauge({
      name: 'osb_instance_engine_stats_up',
      help: "1 when the last collection of an instance's engine stats gave numbers, 0 when its stats script failed (the dashboard says why); absent when stale.",
      labelNames: ['instance_id', 'offering', 'plan'],
      registers,
      async collect() {
        this.reset();
        for (const { instance, reading } of await liveReadings()) this.set({ instance_id: instance.id, ...names(instance) }, reading.values ? 1 : 0);
      },
    });
  }

  /** The exposition format's content type, for the response header. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Every metric in the Prometheus text format, the scrape-time ones read now. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  /** One answered HTTP request; `route` is a template (never a raw path, which would carry ids). */
  requestFinished(method: string, route: string, status: number, seconds: number): void {
    this.http.observe(METHODS.has(method) ? method : 'other', route, status, seconds);
  }

  operationStarted(type: OperationType): void {
    this.operationsStarted.inc({ type });
  }

  operationFinished(type: OperationType, outcome: OperationOutcome, seconds: number): void {
    this.operationsFinished.inc({ type, outcome });
    this.operationDuration.observe({ type, outcome }, seconds);
  }

  leaseTakenOver(type: OperationType): void {
    this.leaseTakeovers.inc({ type });
  }

  backupEnded(backup: Parameters<BackupObserver['backupEnded']>[0]): void {
    if (backup.state === 'in progress') return;
    this.backupsEnded.inc({ origin: backup.origin ?? 'manual', outcome: backup.state });
  }

  /** Offering and plan names from the catalog; an id the catalog no longer has stands for itself. */
  private labelNames(): (instance: InstanceRecord) => { offering: string; plan: string } {
    const offerings = new Map(this.sources.definitions.map((definition) => [definition.offering.id, definition.offering]));
    return (instance) => {
      const offering = offerings.get(instance.serviceId);
      const plan = offering?.plans.find((candidate) => candidate.id === instance.planId);
      return { offering: offering?.name ?? instance.serviceId, plan: plan?.name ?? instance.planId };
    };
  }

  /** The gauges of one scrape are collected together: they share one round of checks and one instance list. */
  private scrapeSnapshot(): Promise<Snapshot> {
    this.snapshot ??= this.takeSnapshot().finally(() => {
      this.snapshot = undefined;
    });
    return this.snapshot;
  }

  private async takeSnapshot(): Promise<Snapshot> {
    const { checks, listInstances } = this.sources;
    const source = this.instancesByHealth;
    const lastSuccess = this.backupLastSuccess;
    const engineStats = this.engineStats;
    const [readiness, instances, health, backupLastSuccess, engineReadings] = await Promise.all([
      checks.run(),
      within(listInstances, checks.timeoutMs).catch(() => undefined),
      source ? within(async () => source(), checks.timeoutMs).catch(() => undefined) : undefined,
      lastSuccess ? within(lastSuccess, checks.timeoutMs).catch(() => undefined) : undefined,
      engineStats ? within(engineStats, checks.timeoutMs).catch(() => undefined) : undefined,
    ]);
    return { readiness, instances, health, backupLastSuccess, engineStats: engineReadings };
  }
}
