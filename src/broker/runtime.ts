import type { Config } from '../config.js';
import { displayName, imageTag, type Limits, type ServiceDefinition } from '../catalog/definition.js';
import { PortInUseError, type DockerEngine } from '../docker/engine.js';
import { LABEL, type ContainerLimits } from '../docker/types.js';
import type { Readable } from 'node:stream';
import type { ImageBuilder } from '../images/builder.js';
import type { BindingRecord, InstanceRecord } from '../store/records.js';
import { waitFor } from '../wait.js';
import { InstanceScripts, type ContainerTarget } from './scripts.js';
import {
  PortTakenError,
  type DriftRuntime,
  type RestartRuntime,
  type DumpRuntime,
  type EngineInventory,
  type InventoryObject,
  type InstanceContainers,
  type InstanceEvent,
  type InstanceRuntime,
  type Progress,
  type VolumeSwapRuntime,
} from './contracts.js';
import { publishedPortAnswers } from './probe.js';
import { probedHostPort, type InstanceTls } from './tls.js';

/** Container events after which the reconciler looks at the instance again. */
const WATCHED_ACTIONS = ['die', 'stop', 'kill', 'oom', 'destroy', 'start'];

/** What it takes to run one instance on the engine: containers, volumes and the scripts inside the image. */
export class DockerRuntime implements InstanceRuntime, DriftRuntime, DumpRuntime, VolumeSwapRuntime, RestartRuntime, InstanceContainers, EngineInventory {
  constructor(
    private readonly engine: DockerEngine,
    private readonly images: ImageBuilder,
    private readonly config: Config,
    private readonly scripts = new InstanceScripts(config),
  ) {}

  /** Issues and delivers the TLS files of TLS offerings into their containers (set at start-up; without it, none). */
  tls?: Pick<InstanceTls, 'prepare'>;

  labels(instance: InstanceRecord): Record<string, string> {
    return instanceLabels(this.config.brokerId, instance);
  }

  /** After renewed TLS files were put into the running container: the offering's reload-tls script. */
  async reloadTls(definition: ServiceDefinition, instance: InstanceRecord, target: ContainerTarget, signal: AbortSignal): Promise<void> {
    await this.scripts.run(target, definition, instance, 'reload-tls', {}, signal);
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
        ...publishedExtraPorts(definition, instance).map(([name, containerPort]) => ({
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
    // The TLS files are current before the engine starts: in a new container, and after a renewal it missed.
    await this.tls?.prepare(definition, instance, this.target(instance));
    try {
      await this.engine.startContainer(instance.containerName);
    } catch (error) {
      if (error instanceof PortInUseError) throw new PortTakenError(error.message);
      throw error;
    }
    await progress(`Starting ${displayName(definition)}.`);
    await this.scripts.waitReady(async () => this.target(instance), definition, instance, signal);
    // The server listens from here on, so the published port can be probed while setup and the login check run.
    const published = this.waitForPublishedPort(probedHostPort(definition, instance)!, signal);
    published.catch(() => {}); // awaited below; a failure must not go unhandled meanwhile
    await progress('Setting up the administrator and the database.');
    await this.script(definition, instance, 'setup', signal);
    await progress('Checking that the service accepts a login through the published port.');
    await this.script(definition, instance, 'check', signal);
    await published;
  }

  /** A restart on request: the engine stops the container (the offering's stop timeout), then it starts as above. */
  async restartInstance(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    await progress(`Stopping ${displayName(definition)} (it has ${definition.container.stopTimeoutSeconds} s to shut down cleanly).`);
    await this.engine.stopContainer(instance.containerName, definition.container.stopTimeoutSeconds);
    signal.throwIfAborted();
    await this.restart(definition, instance, signal, progress);
  }

  private async waitForPublishedPort(port: number, signal: AbortSignal): Promise<void> {
    const host = this.config.probeHost;
    await waitFor(async () => ((await publishedPortAnswers(host, port)) ? true : undefined), {
      intervalMs: 100,
      timeoutMs: 5_000,
      signal,
      onTimeout: () => new Error(`nothing answers on the published port ${host}:${port}`),
    });
  }

  inspect(instance: Omit<InstanceRecord, 'secrets'>) {
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

  /** The broker's instance containers and volumes on this engine. */
  async inventory(): Promise<{ workloads: InventoryObject[]; volumes: InventoryObject[]; unreachable: string[] }> {
    const labels = { [LABEL.broker]: this.config.brokerId, [LABEL.role]: 'instance' };
    const containers = await this.engine.listContainers(labels);
    const volumes = await this.engine.listVolumes(labels);
    return {
      workloads: containers.map((container) => ({ name: container.name, instanceId: container.labels[LABEL.instance] })),
      volumes: volumes.map((volume) => ({ name: volume.name, instanceId: volume.labels[LABEL.instance] })),
      unreachable: [],
    };
  }

  async removeWorkload(object: InventoryObject): Promise<void> {
    await this.engine.removeContainer(object.name);
  }

  async removeVolume(object: InventoryObject): Promise<void> {
    await this.engine.removeVolume(object.name);
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

  /** For an in-place restore: the same container (name, ports, settings) made again on another volume of the instance. */
  async moveToVolume(definition: ServiceDefinition, instance: InstanceRecord, volumeName: string, signal: AbortSignal, progress: Progress): Promise<void> {
    await this.recreate(definition, { ...instance, volumeName }, signal, progress);
  }

  async checkReady(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    await this.scripts.waitReady(async () => this.target(instance), definition, instance, signal);
    await this.script(definition, instance, 'check', signal);
  }

  async removeInstanceVolume(_instance: InstanceRecord, volumeName: string): Promise<void> {
    await this.engine.removeVolume(volumeName);
  }

  async applyLimits(definition: ServiceDefinition, instance: InstanceRecord, planId: string): Promise<void> {
    await this.engine.updateLimits(instance.containerName, containerLimits(definition.limits.get(planId)!));
  }

  async configure(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    await this.script(definition, instance, 'configure', signal);
  }

  bind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<Record<string, string | number>> {
    return this.scripts.bind(this.target(instance), definition, instance, binding, signal);
  }

  async backup(definition: ServiceDefinition, instance: InstanceRecord, options: { timeoutSeconds: number; signal: AbortSignal }) {
    return this.scripts.stream(this.target(instance), definition, instance, 'backup', options);
  }

  async restore(
    definition: ServiceDefinition,
    instance: InstanceRecord,
    dump: Readable,
    options: { timeoutSeconds: number; signal: AbortSignal },
  ): Promise<void> {
    const run = await this.scripts.stream(this.target(instance), definition, instance, 'restore', { ...options, input: dump });
    run.stdout.resume();
    await run.finished;
  }

  async unbind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<void> {
    await this.scripts.unbind(this.target(instance), definition, instance, binding, signal);
  }

  async locate(instance: Omit<InstanceRecord, 'secrets'>): Promise<ContainerTarget> {
    return this.target(instance);
  }

  private target(instance: Omit<InstanceRecord, 'secrets'>): ContainerTarget {
    return { engine: this.engine, container: instance.containerName };
  }

  private script(definition: ServiceDefinition, instance: InstanceRecord, name: string, signal: AbortSignal): Promise<string> {
    return this.scripts.run(this.target(instance), definition, instance, name, {}, signal);
  }
}

/** The labels of everything made for an instance (container or service, volume), on one engine or a Swarm. */
export function instanceLabels(
  brokerId: string,
  instance: Pick<InstanceRecord, 'id' | 'serviceId' | 'planId'> & { context?: Record<string, unknown> },
): Record<string, string> {
  const name = instance.context?.instance_name;
  return {
    [LABEL.broker]: brokerId,
    [LABEL.role]: 'instance',
    [LABEL.instance]: instance.id,
    [LABEL.service]: instance.serviceId,
    [LABEL.plan]: instance.planId,
    ...(typeof name === 'string' && name ? { [LABEL.instanceName]: name } : {}),
  };
}

export function containerLimits(limits: Limits): ContainerLimits {
  return { memoryBytes: limits.memoryMb * 1024 * 1024, nanoCpus: Math.round(limits.cpus * 1e9), pids: limits.pids };
}

/**
 * The offering's extra ports that have a host port reserved: all of them, except for an instance made before its
 * offering gained one (it gets it at its maintenance upgrade); until then that port is left unpublished.
 */
export function publishedExtraPorts(definition: ServiceDefinition, instance: Pick<InstanceRecord, 'extraHostPorts'>): Array<[string, number]> {
  return Object.entries(definition.container.extraPorts).filter(([name]) => instance.extraHostPorts?.[name] !== undefined);
}
