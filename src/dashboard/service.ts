import { displayName, type ServiceDefinition } from '../catalog/definition.js';
import type { Config } from '../config.js';
import type { ContainerUsage, LogLine, ProcessList } from '../docker/types.js';
import type { HealthRecord, InstanceRecord } from '../store/records.js';
import { describeHealth } from '../broker/reconciler.js';
import type { InstanceContainers } from '../broker/contracts.js';
import type { RedisStore } from '../store/redis-store.js';
import { usageHistory, type UsageHistory } from '../broker/usage-series.js';
import { logLevel, type LogLevel } from './log-level.js';

export interface InstanceDetails {
  id: string;
  name?: string;
  offering: { name: string; displayName: string };
  plan: { name: string; limits?: { memoryMb: number; cpus: number; pids: number } };
  state: string;
  lastOperation?: { type: string; state: string; description: string; at: string };
  image: string;
  version: string;
  createdAt: string;
  endpoints: string[];
  bindings: number;
  /** The live bindings, by the name the platform gave (its bind context's binding_name) where it gave one. No credentials. */
  bindingList: Array<{ id: string; name?: string; createdAt: string }>;
  container?: {
    status: string;
    running: boolean;
    startedAt?: string;
    finishedAt?: string;
    exitCode?: number;
    restartCount: number;
    health?: string;
  };
  /** What the engine really runs, for a ready instance the broker has found down at least once. */
  health?: { state: 'running' | 'down' | 'repaired'; since: string; reason?: string; repairedAt?: string; summary: string };
  /** Why there is no live data, in words a developer understands. */
  explanation?: string;
}

export interface OverviewRow {
  id: string;
  name?: string;
  offering: string;
  plan: string;
  /** The record's state; for a ready instance whose container is not running, `down` (the broker's finding), `missing` or the engine's status. */
  state: string;
  endpoint?: string;
  createdAt: string;
}

/** An instance as the dashboard handles it: the stored record without its secrets. */
export type DashboardInstance = Omit<InstanceRecord, 'secrets'>;

/**
 * What the dashboard shows, read from the store and the engine. Never a password, never a container's environment:
 * secrets are read here only to be removed from what the engine says, and never leave this class.
 */
export class DashboardService {
  private readonly definitions: Map<string, ServiceDefinition>;

  constructor(
    private readonly store: RedisStore,
    private readonly containers: InstanceContainers,
    definitions: ServiceDefinition[],
    private readonly config: Config,
  ) {
    this.definitions = new Map(definitions.map((definition) => [definition.offering.id, definition]));
  }

  async instance(id: string): Promise<DashboardInstance | undefined> {
    const record = await this.store.getInstance(id);
    if (!record || record.state === 'deleted') return undefined;
    const { secrets: _secrets, ...instance } = record;
    return instance;
  }

  async overview(): Promise<OverviewRow[]> {
    const instances = await this.store.listInstances();
    // What the engine runs, not only what the record says: a ready instance whose container exited is not green.
    const engineState = new Map(
      await Promise.all(
        instances
          .filter((instance) => instance.state === 'ready')
          .map(async (instance) => {
            const [health, container] = await Promise.all([this.store.getHealth(instance.id), this.containers.inspect(instance).catch(() => undefined)]);
            const state = health?.state === 'down' ? 'down' : !container ? 'missing' : container.running ? undefined : container.status;
            return [instance.id, state] as const;
          }),
      ),
    );
    return instances
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
      .map((instance) => {
        const definition = this.definitions.get(instance.serviceId);
        return {
          id: instance.id,
          name: instanceName(instance),
          offering: definition?.offering.name ?? instance.serviceId,
          plan: definition?.offering.plans.find((plan) => plan.id === instance.planId)?.name ?? instance.planId,
          state: engineState.get(instance.id) ?? instance.state,
          endpoint: instance.hostPort ? `${this.config.advertisedHost}:${instance.hostPort}` : undefined,
          createdAt: instance.createdAt,
        };
      });
  }

  async details(instance: DashboardInstance): Promise<InstanceDetails> {
    const definition = this.definitions.get(instance.serviceId);
    const plan = definition?.offering.plans.find((candidate) => candidate.id === instance.planId);
    const [operation, bindings, container, health] = await Promise.all([
      this.store.getOperation(instance.lastOperationId),
      this.store.listBindings(instance.id),
      this.containers.inspect(instance),
      instance.state === 'ready' ? this.store.getHealth(instance.id) : undefined,
    ]);
    const ports = [instance.hostPort, ...Object.values(instance.extraHostPorts ?? {})].filter((port): port is number => Boolean(port));
    return {
      id: instance.id,
      name: instanceName(instance),
      offering: { name: definition?.offering.name ?? instance.serviceId, displayName: definition ? displayName(definition) : '' },
      plan: { name: plan?.name ?? instance.planId, limits: definition?.limits.get(instance.planId) },
      state: instance.state,
      lastOperation: operation && {
        type: operation.type,
        state: operation.state,
        description: operation.description,
        at: operation.finishedAt ?? operation.createdAt,
      },
      image: definition ? `${definition.imageRepository}:${instance.maintenanceVersion}` : '',
      version: instance.maintenanceVersion,
      createdAt: instance.createdAt,
      endpoints: ports.map((port) => `${instance.advertisedHost ?? this.config.advertisedHost}:${port}`),
      bindings: bindings.filter((binding) => binding.state === 'ready').length,
      bindingList: bindings
        .filter((binding) => binding.state === 'ready')
        .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
        .map((binding) => ({ id: binding.id, name: contextName(binding.context, 'binding_name'), createdAt: binding.createdAt })),
      container: container && {
        status: container.status,
        running: container.running,
        startedAt: container.startedAt,
        finishedAt: container.finishedAt,
        exitCode: container.exitCode,
        restartCount: container.restartCount,
        health: container.health,
      },
      ...(health
        ? {
            health: {
              state: health.state,
              since: health.since,
              reason: health.reason,
              repairedAt: health.repairedAt,
              summary: describeHealth(health),
            },
          }
        : {}),
      explanation: explain(instance, container, health, this.config.reconcileSeconds),
    };
  }

  /** Live CPU, memory, network and process count; undefined when the container is not running. */
  async usage(instance: DashboardInstance): Promise<ContainerUsage | undefined> {
    const target = await this.running(instance);
    return target ? target.engine.usage(target.container).catch(() => undefined) : undefined;
  }

  /** The kept hour of samples the broker took (one replica samples), with the data volume against the plan's disk_mb. */
  async usageHistory(instance: DashboardInstance): Promise<UsageHistory> {
    const [samples, disk] = await Promise.all([this.store.usage.samples(instance.id), this.store.usage.diskSamples(instance.id)]);
    const diskMb = this.definitions.get(instance.serviceId)?.limits.get(instance.planId)?.diskMb;
    return usageHistory(samples, disk, { sampleSeconds: this.config.usageSampleSeconds, keepSeconds: this.config.usageKeepSeconds, diskMb });
  }

  async top(instance: DashboardInstance): Promise<ProcessList | undefined> {
    const target = await this.running(instance);
    if (!target) return undefined;
    const redact = await this.redactor(instance);
    const list = await target.engine.top(target.container);
    return { titles: list.titles, processes: list.processes.map((row) => row.map(redact)) };
  }

  async logs(instance: DashboardInstance, tail: number): Promise<LevelledLine[] | undefined> {
    const target = await this.containers.locate(instance).catch(() => undefined);
    if (!target) return undefined;
    // One round trip's time, not three: the engine reads the tail (from the end of the log file) meanwhile.
    const [container, redact, lines] = await Promise.all([
      target.engine.inspectContainer(target.container),
      this.redactor(instance),
      target.engine.logs(target.container, tail).catch((error: unknown) => error as Error),
    ]);
    if (!container) return undefined;
    if (lines instanceof Error) throw lines;
    return lines.map((line) => levelled(line, redact));
  }

  /** Streams new lines, redacted, until the signal aborts; the secrets list is refreshed as bindings come and go. */
  async follow(instance: DashboardInstance, sinceSeconds: number, onLine: (line: LevelledLine) => void, signal: AbortSignal): Promise<void> {
    let redact = await this.redactor(instance);
    const refresh = setInterval(() => {
      this.redactor(instance).then(
        (next) => (redact = next),
        () => {},
      );
    }, 2000);
    try {
      const target = await this.containers.locate(instance);
      await target.engine.followLogs(target.container, sinceSeconds, (line) => onLine(levelled(line, redact)), signal);
    } finally {
      clearInterval(refresh);
    }
  }

  /** Every secret the broker knows for this instance, removed before any byte leaves the broker. */
  /** The container of a running instance, wherever it runs; undefined when it is not running or cannot be reached. */
  private async running(instance: DashboardInstance) {
    const target = await this.containers.locate(instance).catch(() => undefined);
    const container = target && (await target.engine.inspectContainer(target.container).catch(() => undefined));
    return container?.running ? target : undefined;
  }

  private async redactor(instance: DashboardInstance): Promise<(text: string) => string> {
    const [record, bindings] = await Promise.all([this.store.getInstance(instance.id), this.store.listBindings(instance.id)]);
    const secrets = [record?.secrets.adminPassword ?? '', ...bindings.map((binding) => binding.secrets.password)]
      .flatMap((secret) => [secret, encodeURIComponent(secret)])
      .filter((secret, index, all) => secret.length >= 4 && all.indexOf(secret) === index)
      .sort((a, b) => b.length - a.length);
    return (text) => secrets.reduce((result, secret) => (result.includes(secret) ? result.split(secret).join('••••••') : result), text);
  }
}

function instanceName(instance: DashboardInstance): string | undefined {
  return contextName(instance.context, 'instance_name');
}

function contextName(context: Record<string, unknown> | undefined, field: 'instance_name' | 'binding_name'): string | undefined {
  const name = context?.[field];
  return typeof name === 'string' && name ? name : undefined;
}

/** A log line as the page gets it: redacted, with the level the line states (see log-level.ts). */
export type LevelledLine = LogLine & { level?: LogLevel };

function levelled(line: LogLine, redact: (text: string) => string): LevelledLine {
  const text = redact(line.text);
  const level = logLevel(text);
  return level ? { ...line, text, level } : { ...line, text };
}

/** " with code 137 (killed: SIGKILL)": the exit code, and what the usual ones mean. */
function exitCode(container: { exitCode?: number; oomKilled?: boolean }): string {
  if (container.exitCode === undefined) return '';
  const meaning = container.oomKilled
    ? 'killed for going over its memory limit'
    : ({ 0: 'it ended on its own', 137: 'killed: SIGKILL', 143: 'stopped: SIGTERM' } as Record<number, string>)[container.exitCode];
  return ` with code ${container.exitCode}${meaning ? ` (${meaning})` : ''}`;
}

/** " at 2026-11-30 03:12:09 UTC", when the engine knows. */
function endedAt(container: { finishedAt?: string }): string {
  const at = container.finishedAt;
  return at && !at.startsWith('0001') ? ` at ${at.slice(0, 19).replace('T', ' ')} UTC` : '';
}

function explain(
  instance: DashboardInstance,
  container: { running: boolean; status: string; exitCode?: number; oomKilled?: boolean; finishedAt?: string; error?: string } | undefined,
  health: HealthRecord | undefined,
  reconcileSeconds: number,
): string | undefined {
  if (instance.state === 'provisioning') return 'The instance is still being provisioned; live data appears once its container runs.';
  if (instance.state === 'deprovisioning') return 'The instance is being deleted.';
  const ready = instance.state === 'ready';
  // The broker's own finding comes first: it says why, and what it did or what is left to do.
  if (ready && health?.state === 'down') {
    const next =
      health.cause === 'stopped' || health.cause === 'removed'
        ? `The broker brings it back, and tries again every ${reconcileSeconds} s while that fails; the logs below show why it ended.`
        : health.cause === 'restarting'
          ? 'Docker restarts it; the logs below show why it ended.'
          : health.cause === 'removing'
            ? 'The broker looks at it again once it is gone.'
            : 'The broker does not repair this on its own.';
    return `Down since ${health.since}: ${health.reason ?? 'unknown reason'}. ${next}`;
  }
  if (!container) {
    if (instance.state === 'failed') return 'Provisioning failed, so there is no container; the last operation says why. Delete the instance and create it again.';
    return ready && reconcileSeconds > 0
      ? 'The container of this instance is missing from the Docker engine. The broker makes it again from its data volume (or reports the volume missing) within moments.'
      : 'The container of this instance is missing from the Docker engine.';
  }
  if (!container.running) {
    if (container.status === 'unreachable') return `The instance cannot be reached: ${container.error ?? 'its node is down'}.`;
    const state = `The container ${container.status === 'exited' ? 'exited' : `is ${container.status}`}${exitCode(container)}${endedAt(container)}.`;
    if (container.status === 'restarting') return `${state} Docker restarts it; the logs below show why it ended.`;
    if (!ready) return `${state} The logs below show why it ended.`;
    return reconcileSeconds > 0
      ? `${state} The broker starts it again within moments (or use Restart); the logs below show why it ended.`
      : `${state} Start it again with Restart above (or osb-docker restart); the logs below show why it ended.`;
  }
  return undefined;
}
