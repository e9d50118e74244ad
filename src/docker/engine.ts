// One adapter over the engine API, kept whole so that it stays the only module that imports dockerode; its pure
// helpers live beside it (types.ts, log-lines.ts, events.ts).
import Docker from 'dockerode';
import tar from 'tar-stream';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { waitFor } from '../wait.js';
import {
  type ContainerLimits,
  type ContainerPlan,
  type ContainerEvent,
  type ContainerSummary,
  type ContainerUsage,
  type ExecOptions,
  type ExecResult,
  type LogLine,
  type ProcessList,
  type UsageCounters,
} from './types.js';
import { demuxLogs, parseLogLine } from './log-lines.js';
import { parseContainerEvent } from './events.js';
import { ExecDemux } from './exec-frames.js';

export class PortInUseError extends Error {}

const statusOf = (error: unknown) => (error as { statusCode?: number }).statusCode;
const ignoreStatus = async <T>(promise: Promise<T>, ...codes: number[]): Promise<T | undefined> => {
  try {
    return await promise;
  } catch (error) {
    if (codes.includes(statusOf(error) ?? 0)) return undefined;
    throw error;
  }
};

/** Thin, typed adapter over the engine API. Nothing else in the broker talks to dockerode. */
export class DockerEngine {
  private readonly docker: Docker;

  constructor(options?: Docker.DockerOptions) {
    this.docker = new Docker(options);
  }

  async ping(): Promise<void> {
    await this.docker.ping();
  }

  /** A label of an image; undefined when the image or the label is missing. */
  async imageLabel(tag: string, label: string): Promise<string | undefined> {
    const image = await ignoreStatus(this.docker.getImage(tag).inspect(), 404);
    return image?.Config?.Labels?.[label];
  }

  /** The image's content id (sha256:...), or undefined when the engine does not have it. */
  async imageId(tag: string): Promise<string | undefined> {
    const image = await ignoreStatus(this.docker.getImage(tag).inspect(), 404);
    return image?.Id;
  }

  /** Copies an image from this engine to another one as a stream (`docker save | docker load`), never buffered. */
  async copyImageTo(target: DockerEngine, tag: string): Promise<void> {
    const archive = await this.docker.getImage(tag).get();
    const reply = await target.docker.loadImage(archive, { quiet: true });
    await new Promise<void>((resolve, reject) => {
      target.docker.modem.followProgress(reply, (error: Error | null, output: Array<{ error?: string }>) => {
        const failed = error?.message ?? output.find((event) => event.error)?.error;
        if (failed) reject(new Error(`loading ${tag} failed: ${failed.trim()}`));
        else resolve();
      });
    });
  }

  /** Builds `contextDir` into `tag`, reporting each line of build output. */
  async buildImage(
    contextDir: string,
    tag: string,
    buildArgs: Record<string, string>,
    labels: Record<string, string>,
    onLine: (line: string) => void,
  ): Promise<void> {
    const stream = await this.docker.buildImage(
      { context: contextDir, src: listFiles(contextDir) },
      { t: tag, buildargs: buildArgs, labels, rm: true, forcerm: true },
    );
    await new Promise<void>((resolve, reject) => {
      this.docker.modem.followProgress(
        stream,
        (error: Error | null, output: Array<{ error?: string }>) => {
          const failed = error?.message ?? output.find((event) => event.error)?.error;
          if (failed) reject(new Error(`building ${tag} failed: ${failed.trim()}`));
          else resolve();
        },
        (event: { stream?: string; status?: string; error?: string }) => {
          const text = (event.stream ?? event.status ?? event.error ?? '').trimEnd();
          if (text) for (const line of text.split('\n')) onLine(line);
        },
      );
    });
  }

  async ensureVolume(name: string, labels: Record<string, string>): Promise<void> {
    const existing = await ignoreStatus(this.docker.getVolume(name).inspect(), 404);
    if (!existing) await this.docker.createVolume({ Name: name, Labels: labels });
  }

  async volumeExists(name: string): Promise<boolean> {
    return (await ignoreStatus(this.docker.getVolume(name).inspect(), 404)) !== undefined;
  }

  /** Removes a volume; waits briefly while a just-removed container still holds it. */
  async removeVolume(name: string): Promise<void> {
    let inUse: unknown;
    await waitFor(
      async () => {
        try {
          await ignoreStatus(this.docker.getVolume(name).remove(), 404);
          return true;
        } catch (error) {
          if (statusOf(error) !== 409) throw error;
          inUse = error;
          return undefined;
        }
      },
      { intervalMs: 100, timeoutMs: 5_000, onTimeout: () => inUse as Error },
    );
  }

  /** Creates the container unless one of that name exists (names are unique per instance). */
  async createContainer(plan: ContainerPlan): Promise<void> {
    const publish = plan.publish ?? [];
    const key = (port: number) => `${port}/tcp`;
    try {
      await this.docker.createContainer({
        name: plan.name,
        Image: plan.image,
        Labels: plan.labels,
        Env: plan.env,
        ExposedPorts: Object.fromEntries(publish.map((port) => [key(port.containerPort), {}])),
        StopTimeout: plan.stopTimeoutSeconds,
        HostConfig: {
          RestartPolicy: { Name: 'unless-stopped' },
          SecurityOpt: ['no-new-privileges:true'],
          Privileged: false,
          CapDrop: plan.capDrop,
          CapAdd: plan.capAdd,
          Binds: plan.volume ? [`${plan.volume.name}:${plan.volume.path}`] : undefined,
          NetworkMode: plan.network,
          PortBindings: Object.fromEntries(
            publish.map((port) => [key(port.containerPort), [{ HostIp: port.hostIp, HostPort: port.hostPort ? String(port.hostPort) : '' }]]),
          ),
          ...(plan.limits ? limitsConfig(plan.limits) : {}),
          LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '3' } },
        },
      });
    } catch (error) {
      if (statusOf(error) !== 409) throw error;
    }
  }

  async startContainer(name: string): Promise<void> {
    try {
      await ignoreStatus(this.docker.getContainer(name).start(), 304);
    } catch (error) {
      const message = String((error as Error).message);
      if (/port is already allocated|address already in use/i.test(message)) throw new PortInUseError(message);
      throw error;
    }
  }

  async inspectContainer(name: string): Promise<ContainerSummary | undefined> {
    const info = await ignoreStatus(this.docker.getContainer(name).inspect(), 404);
    if (!info) return undefined;
    const bindings = Object.values((info.HostConfig.PortBindings ?? {}) as Record<string, Array<{ HostPort: string }>>)[0];
    const published = Object.values(info.NetworkSettings.Ports ?? {})[0] as Array<{ HostPort: string }> | null | undefined;
    const hostPort = Number(published?.[0]?.HostPort || bindings?.[0]?.HostPort) || undefined;
    const fixedHostPort = Number(bindings?.[0]?.HostPort) || undefined;
    return {
      id: info.Id,
      name: info.Name.replace(/^\//, ''),
      image: info.Config.Image,
      running: info.State.Running,
      status: info.State.Status,
      labels: info.Config.Labels ?? {},
      env: info.Config.Env ?? [],
      restartCount: info.RestartCount,
      startedAt: info.State.StartedAt,
      finishedAt: info.State.FinishedAt,
      exitCode: info.State.ExitCode,
      oomKilled: info.State.OOMKilled || undefined,
      error: info.State.Error || undefined,
      health: info.State.Health?.Status,
      createdAt: info.Created,
      hostPort,
      fixedHostPort,
      networks: Object.keys(info.NetworkSettings.Networks ?? {}),
    };
  }

  /**
   * Writes one file into a container, created or running, through the engine API (a tar archive; no bind mount,
   * so it works with a remote DOCKER_HOST too). The folder must exist in the container. The content travels in
   * the request body only: never in the container's metadata.
   */
  async putFile(container: string, folder: string, file: { name: string; content: Buffer; mode: number; uid: number; gid: number }): Promise<void> {
    const archive = tar.pack();
    archive.entry({ name: file.name, mode: file.mode, uid: file.uid, gid: file.gid, size: file.content.length }, file.content);
    archive.finalize();
    const chunks: Buffer[] = [];
    for await (const chunk of archive) chunks.push(chunk as Buffer);
    await this.docker.getContainer(container).putArchive(Buffer.concat(chunks), { path: folder });
  }

  /**
   * Writes files into a folder of a container, created or running, in one archive through the engine API: the folder
   * (made when missing, its parent must exist) gets mode 700 and the files' owner. As with putFile, the contents travel
   * in the request body only, never in the container's metadata.
   */
  async putFiles(container: string, folder: string, files: Array<{ name: string; content: Buffer; mode: number; uid: number; gid: number }>): Promise<void> {
    const archive = tar.pack();
    const base = path.posix.basename(folder);
    const owner = files[0] ?? { uid: 0, gid: 0 };
    archive.entry({ name: `${base}/`, type: 'directory', mode: 0o700, uid: owner.uid, gid: owner.gid });
    for (const file of files) {
      archive.entry({ name: `${base}/${file.name}`, mode: file.mode, uid: file.uid, gid: file.gid, size: file.content.length }, file.content);
    }
    archive.finalize();
    const chunks: Buffer[] = [];
    for await (const chunk of archive) chunks.push(chunk as Buffer);
    await this.docker.getContainer(container).putArchive(Buffer.concat(chunks), { path: path.posix.dirname(folder) });
  }

  /** Creates a user-defined bridge network unless one of that name exists. */
  async ensureNetwork(name: string, labels: Record<string, string>): Promise<void> {
    if (await ignoreStatus(this.docker.getNetwork(name).inspect(), 404)) return;
    try {
      await this.docker.createNetwork({ Name: name, Driver: 'bridge', Labels: labels, CheckDuplicate: true });
    } catch (error) {
      if (statusOf(error) !== 409) throw error;
    }
  }

  async listNetworks(labels: Record<string, string>): Promise<Array<{ name: string; labels: Record<string, string> }>> {
    const networks = await this.docker.listNetworks({ filters: { label: labelFilter(labels) } });
    return networks.map((network) => ({ name: network.Name, labels: network.Labels ?? {} }));
  }

  /** Removes a network; a missing one is not an error. */
  async removeNetwork(name: string): Promise<void> {
    await ignoreStatus(this.docker.getNetwork(name).remove(), 404);
  }

  /** The engine's process list for a running container. */
  async top(name: string): Promise<ProcessList> {
    const result = (await this.docker.getContainer(name).top({ ps_args: '-o pid,user,%cpu,%mem,rss,etime,args' })) as {
      Titles: string[];
      Processes: string[][];
    };
    return { titles: result.Titles, processes: result.Processes ?? [] };
  }

  /** One sample of CPU, memory, network and process count. */
  async usage(name: string): Promise<ContainerUsage> {
    const stats = await this.docker.getContainer(name).stats({ stream: false });
    const cpuDelta = stats.cpu_stats.cpu_usage.total_usage - stats.precpu_stats.cpu_usage.total_usage;
    const systemDelta = (stats.cpu_stats.system_cpu_usage ?? 0) - (stats.precpu_stats.system_cpu_usage ?? 0);
    const cpus = stats.cpu_stats.online_cpus || stats.cpu_stats.cpu_usage.percpu_usage?.length || 1;
    const networks = Object.values(stats.networks ?? {});
    // The page cache is not the container's own memory; `docker stats` leaves it out the same way.
    const cache =
      (stats.memory_stats.stats as Record<string, number> | undefined)?.total_inactive_file ??
      (stats.memory_stats.stats as Record<string, number> | undefined)?.inactive_file ??
      0;
    return {
      cpuPercent: systemDelta > 0 && cpuDelta > 0 ? (cpuDelta / systemDelta) * cpus * 100 : 0,
      memoryBytes: Math.max(0, (stats.memory_stats.usage ?? 0) - cache),
      memoryLimitBytes: stats.memory_stats.limit ?? 0,
      networkRxBytes: networks.reduce((sum, network) => sum + network.rx_bytes, 0),
      networkTxBytes: networks.reduce((sum, network) => sum + network.tx_bytes, 0),
      pids: stats.pids_stats?.current ?? 0,
    };
  }

  /**
   * CPU time, memory and the network and block I/O totals of a running container; undefined when it is not running.
   * One-shot: the engine answers at its next stats tick instead of waiting for a second one to compute a CPU delta.
   */
  async usageCounters(name: string): Promise<UsageCounters | undefined> {
    const stats = await this.docker.getContainer(name).stats({ stream: false, 'one-shot': true } as { stream: false });
    if (!stats.pids_stats?.current) return undefined;
    const memory = stats.memory_stats.stats as Record<string, number> | undefined;
    // As in usage(): the page cache is not the container's own memory.
    const cache = memory?.total_inactive_file ?? memory?.inactive_file ?? 0;
    const networks = Object.values(stats.networks ?? {});
    const io = (op: string) =>
      (stats.blkio_stats?.io_service_bytes_recursive ?? []).filter((entry) => entry.op.toLowerCase() === op).reduce((sum, entry) => sum + entry.value, 0);
    return {
      cpuNanos: stats.cpu_stats.cpu_usage.total_usage,
      memoryBytes: Math.max(0, (stats.memory_stats.usage ?? 0) - cache),
      memoryLimitBytes: stats.memory_stats.limit ?? 0,
      networkRxBytes: networks.reduce((sum, network) => sum + network.rx_bytes, 0),
      networkTxBytes: networks.reduce((sum, network) => sum + network.tx_bytes, 0),
      blockReadBytes: io('read'),
      blockWriteBytes: io('write'),
    };
  }

  /** The last `tail` lines of stdout and stderr, told apart, with the engine's timestamps. */
  async logs(name: string, tail: number): Promise<LogLine[]> {
    const raw = await this.docker.getContainer(name).logs({ stdout: true, stderr: true, timestamps: true, tail, follow: false });
    return demuxLogs(Buffer.isBuffer(raw) ? raw : Buffer.from(raw as unknown as string));
  }

  /** Calls onLine for each new line (from `sinceSeconds`) until the signal aborts or the container stops. */
  async followLogs(name: string, sinceSeconds: number, onLine: (line: LogLine) => void, signal: AbortSignal): Promise<void> {
    const stream = await this.docker.getContainer(name).logs({ stdout: true, stderr: true, timestamps: true, follow: true, since: sinceSeconds, tail: 0 });
    const outputs = { stdout: new PassThrough(), stderr: new PassThrough() };
    for (const kind of ['stdout', 'stderr'] as const) {
      let pending = '';
      outputs[kind].on('data', (chunk: Buffer) => {
        pending += chunk.toString('utf8');
        const lines = pending.split('\n');
        pending = lines.pop()!;
        for (const line of lines) onLine(parseLogLine(kind, line));
      });
    }
    this.docker.modem.demuxStream(stream, outputs.stdout, outputs.stderr);
    await new Promise<void>((resolve) => {
      const stop = () => {
        (stream as NodeJS.ReadableStream & { destroy(): void }).destroy();
        resolve();
      };
      signal.addEventListener('abort', stop, { once: true });
      stream.on('end', resolve);
      stream.on('error', () => resolve());
    });
  }

  /**
   * Calls onEvent for each event of `actions` on containers that carry all of `labels`, until the signal aborts.
   * When the stream ends or the engine cannot be reached, it connects again (pausing up to 5 s between tries) and
   * asks for the events since the last one seen, so a dropped connection loses nothing the engine still remembers.
   */
  async followContainerEvents(
    labels: Record<string, string>,
    actions: string[],
    onEvent: (event: ContainerEvent) => void,
    signal: AbortSignal,
    onDisconnect: (reason: string) => void = () => {},
  ): Promise<void> {
    let since = Math.floor(Date.now() / 1000);
    let pauseMs = 250;
    while (!signal.aborted) {
      const connectedAt = Date.now();
      let reason = 'the engine closed the event stream';
      try {
        const stream = (await this.docker.getEvents({
          since,
          filters: JSON.stringify({ type: ['container'], event: actions, label: labelFilter(labels) }),
        })) as NodeJS.ReadableStream & { destroy(): void };
        if (signal.aborted) {
          stream.destroy();
          return;
        }
        await new Promise<void>((resolve) => {
          let pending = '';
          const stop = () => {
            stream.destroy();
            resolve();
          };
          const ended = () => {
            signal.removeEventListener('abort', stop);
            resolve();
          };
          signal.addEventListener('abort', stop, { once: true });
          stream.on('data', (chunk: Buffer) => {
            pending += chunk.toString('utf8');
            const lines = pending.split('\n');
            pending = lines.pop()!;
            for (const line of lines) {
              const parsed = parseContainerEvent(line);
              if (!parsed) continue;
              since = Math.max(since, parsed.seconds);
              onEvent(parsed.event);
            }
          });
          stream.on('end', ended);
          stream.on('close', ended);
          stream.on('error', (error: Error) => {
            reason = error.message;
            ended();
          });
        });
      } catch (error) {
        reason = (error as Error).message;
      }
      if (signal.aborted) return;
      onDisconnect(reason);
      pauseMs = Date.now() - connectedAt > 10_000 ? 250 : Math.min(5_000, pauseMs * 2);
      await delay(pauseMs, undefined, { signal }).catch(() => undefined);
    }
  }

  /** Applies new limits to a running container, without a restart. */
  async updateLimits(name: string, limits: ContainerLimits): Promise<void> {
    await this.docker.getContainer(name).update(limitsConfig(limits));
  }

  /** Removes the container at once (SIGKILL) with its anonymous volumes; a missing container is not an error. */
  /** Removes a container; gone already, or being removed by someone else (a Swarm agent ending its task), is fine. */
  async removeContainer(name: string): Promise<void> {
    try {
      await ignoreStatus(this.docker.getContainer(name).remove({ force: true, v: true }), 404);
    } catch (error) {
      if (!(statusOf(error) === 409 && /already in progress/i.test((error as Error).message))) throw error;
    }
  }

  async stopContainer(name: string, timeoutSeconds: number): Promise<void> {
    await ignoreStatus(this.docker.getContainer(name).stop({ t: timeoutSeconds }), 304, 404);
  }

  /** Runs a command inside the container; inputs go through the environment, never through arguments. */
  async exec(name: string, cmd: string[], options: ExecOptions = {}): Promise<ExecResult> {
    const exec = await this.docker.getContainer(name).exec({
      Cmd: cmd,
      Env: Object.entries(options.env ?? {}).map(([key, value]) => `${key}=${value}`),
      User: options.user,
      AttachStdout: true,
      AttachStderr: true,
    });
    const stream = await exec.start({ hijack: true, stdin: false });
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    stdout.on('data', (chunk: Buffer) => out.push(chunk));
    stderr.on('data', (chunk: Buffer) => err.push(chunk));
    this.docker.modem.demuxStream(stream, stdout, stderr);
    await new Promise<void>((resolve, reject) => {
      const timer = options.timeoutMs
        ? setTimeout(() => {
            stream.destroy();
            reject(new Error(`"${cmd.join(' ')}" did not finish within ${options.timeoutMs} ms`));
          }, options.timeoutMs)
        : undefined;
      const onAbort = () => {
        stream.destroy();
        const reason: unknown = options.signal?.reason;
        reject(reason instanceof Error ? reason : new Error('aborted'));
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const done = (error?: Error) => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      stream.on('end', () => done());
      stream.on('close', () => done());
      stream.on('error', done);
    });
    const { ExitCode } = await exec.inspect();
    return {
      exitCode: ExitCode ?? -1,
      stdout: Buffer.concat(out).toString('utf8'),
      stderr: Buffer.concat(err).toString('utf8'),
    };
  }

  /**
   * Runs a command with `input` (if any) as its stdin and its stdout as a stream, both with backpressure, so dumps of
   * any size pass through without piling up in memory. Read `stdout` to its end (or resume it); `finished` then
   * resolves with the exit code and the end of stderr. Aborting the signal ends the command's connection.
   */
  async execStream(
    name: string,
    cmd: string[],
    options: Omit<ExecOptions, 'timeoutMs'> & { input?: Readable } = {},
  ): Promise<{ stdout: Readable; finished: Promise<{ exitCode: number; stderr: string }> }> {
    const exec = await this.docker.getContainer(name).exec({
      Cmd: cmd,
      Env: Object.entries(options.env ?? {}).map(([key, value]) => `${key}=${value}`),
      User: options.user,
      AttachStdin: Boolean(options.input),
      AttachStdout: true,
      AttachStderr: true,
    });
    const socket = await exec.start({ hijack: true, stdin: Boolean(options.input) });
    const demux = new ExecDemux();
    const onAbort = () => socket.destroy(options.signal?.reason instanceof Error ? options.signal.reason : new Error('aborted'));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    // Ending the input half-closes the connection: the engine then closes the command's stdin.
    const fed = options.input ? pipeline(options.input, socket, { end: true }) : Promise.resolve();
    const read = pipeline(socket, demux).catch((error: unknown) => {
      demux.destroy(error as Error);
      throw error;
    });
    const finished = (async () => {
      try {
        await Promise.all([fed, read]);
        // The exit code is there a moment after the stream ends.
        const exitCode = await waitFor(
          async () => {
            const state = await exec.inspect();
            return state.Running ? undefined : (state.ExitCode ?? -1);
          },
          { intervalMs: 20, timeoutMs: 10_000 },
        );
        return { exitCode, stderr: demux.stderr };
      } finally {
        options.signal?.removeEventListener('abort', onAbort);
      }
    })();
    finished.catch(() => {}); // the caller awaits it; until then a failure must not go unhandled
    return { stdout: demux, finished };
  }

  async listContainers(labels: Record<string, string>): Promise<ContainerSummary[]> {
    const containers = await this.docker.listContainers({ all: true, filters: { label: labelFilter(labels) } });
    return containers.map((container) => ({
      id: container.Id,
      name: (container.Names[0] ?? '').replace(/^\//, ''),
      image: container.Image,
      running: container.State === 'running',
      status: container.State,
      labels: container.Labels,
      env: [],
      restartCount: 0,
      createdAt: new Date(container.Created * 1000).toISOString(),
      hostPort: container.Ports.find((port) => port.PublicPort)?.PublicPort,
    }));
  }

  async listVolumes(labels: Record<string, string>): Promise<Array<{ name: string; labels: Record<string, string> }>> {
    const { Volumes } = await this.docker.listVolumes({ filters: { label: labelFilter(labels) } });
    return (Volumes ?? []).map((volume) => ({ name: volume.Name, labels: volume.Labels ?? {} }));
  }
}

function limitsConfig(limits: ContainerLimits) {
  // MemorySwap equal to Memory: no swap, so the plan's memory is the real ceiling.
  return { Memory: limits.memoryBytes, MemorySwap: limits.memoryBytes, NanoCpus: limits.nanoCpus, PidsLimit: limits.pids };
}

function labelFilter(labels: Record<string, string>): string[] {
  return Object.entries(labels).map(([key, value]) => `${key}=${value}`);
}

function listFiles(root: string, dir = root): string[] {
  return readdirSync(dir).flatMap((entry) => {
    const full = path.join(dir, entry);
    return statSync(full).isDirectory() ? listFiles(root, full) : [path.relative(root, full)];
  });
}
