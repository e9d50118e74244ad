import type { Config } from '../config.js';
import { displayName, imageTag, type Limits, type ServiceDefinition } from '../catalog/definition.js';
import { PortInUseError, type DockerEngine } from '../docker/engine.js';
import { LABEL, type ContainerLimits } from '../docker/types.js';
import type { ImageBuilder } from '../images/builder.js';
import type { BindingRecord, InstanceRecord } from '../store/records.js';
import { waitFor } from '../wait.js';
import { PortTakenError, type DriftRuntime, type InstanceEvent, type InstanceRuntime, type Progress } from './contracts.js';
import { publishedPortAnswers } from './probe.js';

const READY_POLL_MS = 100;
/** After the time-out, `timeout` sends TERM; a script that ignores it is killed this much later. */
const SCRIPT_KILL_AFTER_SECONDS = 5;
/** coreutils `timeout` exits with 124 when TERM stopped the command, 137 (128 + KILL) when it had to kill it. */
const TIMED_OUT = 124;
const KILLED = 137;

/** Container events after which the reconciler looks at the instance again. */
const WATCHED_ACTIONS = ['die', 'stop', 'kill', 'oom', 'destroy', 'start'];

export class ScriptError extends Error {}

/** What it takes to run one instance on the engine: containers, volumes and the scripts inside the image. */
export class DockerRuntime implements InstanceRuntime, DriftRuntime {
  constructor(
    private readonly engine: DockerEngine,
    private readonly images: ImageBuilder,
    private readonly config: Config,
  ) {}

  labels(instance: InstanceRecord): Record<string, string> {
    return {
      [LABEL.broker]: this.config.brokerId,
      [LABEL.role]: 'instance',
      [LABEL.instance]: instance.id,
      [LABEL.service]: instance.serviceId,
      [LABEL.plan]: instance.planId,
    };
  }

  /** Creates volume and container, starts it and returns once the engine accepts a login through the published port. */
  async start(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    const tag = imageTag(definition);
    if (!(await this.images.isCurrent(definition.folder, tag))) {
      await progress(`Building image ${tag} from catalog/${definition.offering.name}/Dockerfile (first use of this recipe; this takes a few minutes).`);
      await this.images.ensure(definition.folder, tag);
    }
    signal.throwIfAborted();
    await progress('Creating the container and its volume.');
    await this.engine.ensureVolume(instance.volumeName, this.labels(instance));
    await this.engine.createContainer({
      name: instance.containerName,
      image: tag,
      labels: this.labels(instance),
      publish: [
        { containerPort: definition.container.port, hostIp: this.config.publishIp, hostPort: instance.hostPort! },
        ...Object.entries(definition.container.extraPorts).map(([name, containerPort]) => ({
          containerPort,
          hostIp: this.config.publishIp,
          hostPort: instance.extraHostPorts![name]!,
        })),
      ],
      volume: { name: instance.volumeName, path: definition.container.dataPath },
      limits: containerLimits(definition.limits.get(instance.planId)!),
      capDrop: definition.container.capDrop,
      capAdd: definition.container.capAdd,
      stopTimeoutSeconds: definition.container.stopTimeoutSeconds,
    });
    signal.throwIfAborted();
    await this.restart(definition, instance, signal, progress);
  }

  /** Starts the existing container (again) and returns once it accepts a login through the published port. */
  async restart(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    try {
      await this.engine.startContainer(instance.containerName);
    } catch (error) {
      if (error instanceof PortInUseError) throw new PortTakenError(error.message);
      throw error;
    }
    await progress(`Starting ${displayName(definition)}.`);
    await this.waitReady(definition, instance, signal);
    // The server listens from here on, so the published port can be probed while setup and the login check run.
    const published = this.waitForPublishedPort(instance, signal);
    published.catch(() => {}); // awaited below; a failure must not go unhandled meanwhile
    await progress('Setting up the administrator and the database.');
    await this.script(definition, instance, 'setup', {}, signal);
    await progress('Checking that the service accepts a login through the published port.');
    await this.script(definition, instance, 'check', {}, signal);
    await published;
  }

  private async waitReady(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    const seconds = definition.container.readyTimeoutSeconds;
    await waitFor(
      async () => {
        const result = await this.engine
          .exec(instance.containerName, ['timeout', '-k', '2s', '10s', '/osb/ready'], {
            user: definition.container.execUser,
            env: this.env(definition, instance),
            timeoutMs: 15_000,
            signal,
          })
          .catch((error: Error) => ({ exitCode: -1, stdout: '', stderr: error.message }));
        if (result.exitCode === 0) return true;
        const container = await this.engine.inspectContainer(instance.containerName);
        if (!container?.running) {
          throw new Error(`the container stopped while starting (state: ${container?.status ?? 'missing'}); see its logs`);
        }
        return undefined;
      },
      { intervalMs: READY_POLL_MS, timeoutMs: seconds * 1000, signal, onTimeout: () => new Error(`the service was not ready within ${seconds} s`) },
    );
  }

  private async waitForPublishedPort(instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    const host = this.config.publishIp === '0.0.0.0' ? '127.0.0.1' : this.config.publishIp === '::' ? '::1' : this.config.publishIp;
    await waitFor(async () => ((await publishedPortAnswers(host, instance.hostPort!)) ? true : undefined), {
      intervalMs: 100,
      timeoutMs: 5_000,
      signal,
      onTimeout: () => new Error(`nothing answers on the published port ${host}:${instance.hostPort}`),
    });
  }

  inspect(instance: InstanceRecord) {
    return this.engine.inspectContainer(instance.containerName);
  }

  volumeExists(instance: InstanceRecord): Promise<boolean> {
    return this.engine.volumeExists(instance.volumeName);
  }

  /** Follows the engine's events for this broker's instance containers; reconnects when the connection drops. */
  watch(onEvent: (event: InstanceEvent) => void, signal: AbortSignal, onDisconnect: (reason: string) => void): Promise<void> {
    return this.engine.followContainerEvents(
      { [LABEL.broker]: this.config.brokerId, [LABEL.role]: 'instance' },
      WATCHED_ACTIONS,
      (event) => {
        const instanceId = event.attributes[LABEL.instance];
        if (instanceId) onEvent({ instanceId, action: event.action });
      },
      signal,
      onDisconnect,
    );
  }

  /** Removes container and volume; both may already be gone. */
  async destroy(instance: InstanceRecord): Promise<void> {
    await this.engine.removeContainer(instance.containerName);
    await this.engine.removeVolume(instance.volumeName);
  }

  /** Replaces the container (new image or settings) while keeping volume and host port. */
  async recreate(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    await progress('Replacing the container; the data volume and port stay.');
    await this.engine.stopContainer(instance.containerName, definition.container.stopTimeoutSeconds);
    await this.engine.removeContainer(instance.containerName);
    await this.start(definition, instance, signal, progress);
  }

  async applyLimits(definition: ServiceDefinition, instance: InstanceRecord, planId: string): Promise<void> {
    await this.engine.updateLimits(instance.containerName, containerLimits(definition.limits.get(planId)!));
  }

  async configure(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    await this.script(definition, instance, 'configure', {}, signal);
  }

  /** Creates the binding's user; returns extra credential fields the bind script printed as JSON. */
  async bind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<Record<string, string | number>> {
    const output = await this.script(definition, instance, 'bind', bindingEnv(binding), signal);
    const text = output.trim();
    if (!text) return {};
    try {
      const extra = JSON.parse(text) as unknown;
      if (typeof extra !== 'object' || extra === null || Array.isArray(extra)) throw new Error('not an object');
      return extra as Record<string, string | number>;
    } catch {
      throw new ScriptError('the bind script printed something other than a JSON object');
    }
  }

  async unbind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<void> {
    await this.script(definition, instance, 'unbind', bindingEnv(binding), signal);
  }

  /** Environment handed to every script: the admin login, the plan's limits, the instance's parameters as PARAM_<NAME>. */
  private env(definition: ServiceDefinition, instance: InstanceRecord): Record<string, string> {
    const limits = definition.limits.get(instance.planId);
    const env: Record<string, string> = {
      INSTANCE_ID: instance.id,
      ADMIN_USERNAME: definition.container.adminUsername,
      ADMIN_PASSWORD: instance.secrets.adminPassword,
      ...(limits ? { PLAN_MEMORY_MB: String(limits.memoryMb), PLAN_CPUS: String(limits.cpus), PLAN_PIDS: String(limits.pids) } : {}),
    };
    for (const [name, value] of Object.entries(instance.parameters)) {
      if (value === undefined || value === null) continue;
      env[`PARAM_${name.toUpperCase()}`] = typeof value === 'string' ? value : JSON.stringify(value);
    }
    return env;
  }

  /**
   * Runs /osb/<name> in the container; its output is returned, a failure carries its stderr with secrets removed.
   * An offering without that script has nothing to do at that step.
   */
  private async script(
    definition: ServiceDefinition,
    instance: InstanceRecord,
    name: string,
    extraEnv: Record<string, string>,
    signal: AbortSignal,
  ): Promise<string> {
    if (!definition.scripts.has(name)) return '';
    const env = { ...this.env(definition, instance), ...extraEnv };
    // `timeout` stops the script inside the container; the broker's own deadline is only the last resort.
    const command = ['timeout', '-k', `${SCRIPT_KILL_AFTER_SECONDS}s`, `${this.config.scriptTimeoutSeconds}s`, `/osb/${name}`];
    const started = Date.now();
    const result = await this.engine.exec(instance.containerName, command, {
      user: definition.container.execUser,
      env,
      timeoutMs: (this.config.scriptTimeoutSeconds + SCRIPT_KILL_AFTER_SECONDS + 5) * 1000,
      signal,
    });
    const overran = Date.now() - started >= this.config.scriptTimeoutSeconds * 1000;
    if (result.exitCode === TIMED_OUT || (result.exitCode === KILLED && overran))
      throw new ScriptError(`${name} script did not finish within ${this.config.scriptTimeoutSeconds} s and was stopped`);
    if (result.exitCode !== 0) {
      const secrets = [env.ADMIN_PASSWORD, env.BINDING_PASSWORD].filter((value): value is string => Boolean(value));
      const reason = redact(result.stderr.trim().split('\n').slice(-3).join(' '), secrets) || `exit code ${result.exitCode}`;
      throw new ScriptError(`${name} script failed: ${reason}`);
    }
    return result.stdout;
  }
}

export function containerLimits(limits: Limits): ContainerLimits {
  return { memoryBytes: limits.memoryMb * 1024 * 1024, nanoCpus: Math.round(limits.cpus * 1e9), pids: limits.pids };
}

function bindingEnv(binding: BindingRecord): Record<string, string> {
  return { BINDING_ID: binding.id, BINDING_USERNAME: binding.username, BINDING_PASSWORD: binding.secrets.password };
}

export function redact(text: string, secrets: string[]): string {
  return secrets.reduce((result, secret) => result.split(secret).join('[redacted]'), text);
}
