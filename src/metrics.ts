import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { OperationObserver, OperationOutcome } from './broker/contracts.js';
import type { ServiceDefinition } from './catalog/definition.js';
import { within, type DependencyChecks, type Readiness } from './health.js';
import type { InstanceRecord, OperationType } from './store/records.js';

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

const OPERATION_TYPES: OperationType[] = ['provision', 'update', 'deprovision', 'bind', 'unbind'];
const OUTCOMES: OperationOutcome[] = ['succeeded', 'failed'];
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** What one scrape reads once and every gauge shares. */
interface Snapshot {
  readiness: Readiness;
  /** Undefined when the store did not answer in time. */
  instances?: InstanceRecord[];
  health?: ReadonlyMap<string, string>;
}

/**
 * The broker's Prometheus registry: HTTP requests, operations, instances and the two dependencies, plus the Node
 * process defaults. Counters count from the process start; the instance and dependency gauges are read at scrape.
 */
export class BrokerMetrics implements OperationObserver {
  readonly registry = new Registry();
  /** Settable after start, once a reconciler that keeps health records exists. */
  instancesByHealth?: InstanceHealthSource;

  private readonly httpRequests: Counter<'method' | 'route' | 'status'>;
  private readonly httpDuration: Histogram<'method' | 'route'>;
  private readonly operationsStarted: Counter<'type'>;
  private readonly operationsFinished: Counter<'type' | 'outcome'>;
  private readonly operationDuration: Histogram<'type' | 'outcome'>;
  private readonly leaseTakeovers: Counter<'type'>;
  private snapshot?: Promise<Snapshot>;
  /** Method, route and status are bounded sets (route templates, not paths), so this map stays small. */
  private readonly requestSeries = new Map<string, { count: { inc(): void }; duration: { observe(value: number): void } }>();

  constructor(private readonly sources: MetricsSources) {
    this.instancesByHealth = sources.instancesByHealth;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.httpRequests = new Counter({
      name: 'osb_http_requests_total',
      help: 'HTTP requests answered, by method, route template and status code.',
      labelNames: ['method', 'route', 'status'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'osb_http_request_duration_seconds',
      help: 'Time from a request arriving to its answer being ready, by method and route template.',
      labelNames: ['method', 'route'],
      registers,
    });
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
    const knownMethod = METHODS.has(method) ? method : 'other';
    // The labelled series are looked up once per combination: hashing the labels on every request cost as much
    // as answering the catalog.
    const key = `${knownMethod} ${route} ${status}`;
    let series = this.requestSeries.get(key);
    if (!series) {
      series = {
        count: this.httpRequests.labels(knownMethod, route, String(status)),
        duration: this.httpDuration.labels(knownMethod, route),
      };
      this.requestSeries.set(key, series);
    }
    series.count.inc();
    series.duration.observe(seconds);
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
    const [readiness, instances, health] = await Promise.all([
      checks.run(),
      within(listInstances, checks.timeoutMs).catch(() => undefined),
      source ? within(async () => source(), checks.timeoutMs).catch(() => undefined) : undefined,
    ]);
    return { readiness, instances, health };
  }
}
