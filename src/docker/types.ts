/** The engine's objects as the rest of the broker sees them. */

/** Labels put on everything the broker creates, so it can always find (and reconcile) its own objects. */
export const LABEL = {
  broker: 'io.osb-broker.broker',
  role: 'io.osb-broker.role',
  instance: 'io.osb-broker.instance',
  service: 'io.osb-broker.service',
  plan: 'io.osb-broker.plan',
  /** The platform's name of the instance when its container was made (names can change later; the id cannot). */
  instanceName: 'io.osb-broker.instance-name',
} as const;

export interface ContainerLimits {
  memoryBytes: number;
  nanoCpus: number;
  pids: number;
}

export interface ContainerPlan {
  name: string;
  image: string;
  labels: Record<string, string>;
  env?: string[];
  /** hostPort 0: the engine picks one, anew at every start. */
  publish?: Array<{ containerPort: number; hostIp: string; hostPort: number }>;
  /** A user-defined network to run on instead of the engine's default bridge. */
  network?: string;
  volume?: { name: string; path: string };
  limits?: ContainerLimits;
  capDrop?: string[];
  capAdd?: string[];
  stopTimeoutSeconds?: number;
}

export interface ContainerSummary {
  id: string;
  name: string;
  image: string;
  running: boolean;
  status: string;
  labels: Record<string, string>;
  env: string[];
  restartCount: number;
  startedAt?: string;
  finishedAt?: string;
  exitCode?: number;
  /** The kernel killed the main process for going over the memory limit. */
  oomKilled?: boolean;
  error?: string;
  health?: string;
  createdAt: string;
  /** A published host port: with several (a TLS port too), any one of them, in no fixed order. */
  hostPort?: number;
  /** The host port asked for at every start; undefined when the engine picks one each time. Inspect only. */
  fixedHostPort?: number;
  /** Names of the networks the container is attached to. Inspect only. */
  networks?: string[];
}

export interface LogLine {
  stream: 'stdout' | 'stderr';
  /** RFC 3339 time the engine received the line. */
  time: string;
  text: string;
}

export interface ProcessList {
  titles: string[];
  processes: string[][];
}

export interface ContainerUsage {
  cpuPercent: number;
  memoryBytes: number;
  memoryLimitBytes: number;
  networkRxBytes: number;
  networkTxBytes: number;
  pids: number;
}

/** A running container's totals since it started, read in one quick call; rates come from two of them apart in time. */
export interface UsageCounters {
  /** CPU time used since the container started, in nanoseconds. */
  cpuNanos: number;
  memoryBytes: number;
  memoryLimitBytes: number;
  networkRxBytes: number;
  networkTxBytes: number;
  blockReadBytes: number;
  blockWriteBytes: number;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  env?: Record<string, string>;
  user?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** One lifecycle event of a container (die, stop, kill, oom, destroy, start, ...), as the engine reports it. */
export interface ContainerEvent {
  action: string;
  containerId: string;
  /** The container's labels, with the engine's own attributes (name, image, exitCode for die, signal for kill). */
  attributes: Record<string, string>;
  /** RFC 3339. */
  time: string;
}
