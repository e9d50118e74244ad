import type { Config } from '../config.js';
import { displayName, imageTag, type ServiceDefinition } from '../catalog/definition.js';
import { DockerEngine } from '../docker/engine.js';
import { engineOptions, SwarmManager, type SecretFile, type ServicePlan, type ServiceState, type SwarmNode } from '../docker/swarm.js';
import { LABEL, type ContainerSummary } from '../docker/types.js';
import type { Readable } from 'node:stream';
import type { ImageBuilder } from '../images/builder.js';
import type { BindingRecord, InstanceRecord } from '../store/records.js';
import { waitFor } from '../wait.js';
import {
  PortTakenError,
  type DriftRuntime,
  type DumpRuntime,
  type EngineInventory,
  type InstanceContainers,
  type InstanceEvent,
  type InstanceRuntime,
  type InventoryObject,
  type Placement,
  type Progress,
  type RestartRuntime,
} from './contracts.js';
import { NODE_LABEL, type PlacementNode } from './placement.js';
import { publishedPortAnswers } from './probe.js';
import { containerLimits, instanceLabels, publishedExtraPorts } from './runtime.js';
import { InstanceScripts, type ContainerTarget } from './scripts.js';
import { SwarmTlsSecrets } from './swarm-tls.js';
import { probedHostPort, type InstanceTls, type TlsFiles, type TlsReplacement } from './tls.js';

/** How long a node list is reused: placement and inspection ask often, nodes change rarely. */
const NODES_TTL_MS = 2_000;
/** Task states on the way to `running`: Swarm is (re)starting it. */
const STARTING = new Set(['new', 'allocated', 'pending', 'assigned', 'accepted', 'preparing', 'ready', 'starting']);
/**
 * How long Swarm may take to get a task running on its node (scheduling, preparing, starting the container) before the
 * offering's own ready time starts: a busy node takes far longer than a single engine's `docker start`.
 */
const TASK_START_SECONDS = 180;
const PORT_TAKEN = /port (is )?already (in use|allocated)|address already in use/i;

type Instance = Omit<InstanceRecord, 'secrets'>;

/**
 * Instances as Swarm services of one task each, pinned to the node that holds their volume, ports published in host
 * mode on that node. Swarm runs and restarts them; scripts, logs, processes and usage go through the node's own
 * engine (node label io.osb-broker.engine), and images reach a node by being copied from the manager's engine.
 */
export class SwarmRuntime
  implements InstanceRuntime, DriftRuntime, DumpRuntime, RestartRuntime, InstanceContainers, EngineInventory, Placement, TlsReplacement
{
  private readonly manager: SwarmManager;
  private readonly scripts: InstanceScripts;
  private readonly secrets: SwarmTlsSecrets;
  private readonly engines = new Map<string, DockerEngine>();
  /** Image copies in flight or done in this process, per node and image id: 50 provisions copy an image once. */
  private readonly copies = new Map<string, Promise<void>>();
  private nodeList?: { at: number; nodes: Promise<SwarmNode[]> };
  private managerNodeId?: string;

  constructor(
    /** The manager's own engine (DOCKER_HOST): images are built here. */
    private readonly local: DockerEngine,
    private readonly images: ImageBuilder,
    private readonly config: Config,
    managerOptions?: ConstructorParameters<typeof SwarmManager>[0],
  ) {
    this.manager = new SwarmManager(managerOptions);
    this.scripts = new InstanceScripts(config);
    this.secrets = new SwarmTlsSecrets(this.manager, config.brokerId);
  }

  /** Issues the certificates of TLS offerings, which tasks get as Swarm secrets (set at start-up; without it, none). */
  tls?: Pick<InstanceTls, 'current'>;

  /** Fails with a clear message unless DOCKER_HOST is a Swarm manager. */
  async connect(): Promise<void> {
    const swarm = await this.manager.swarmId();
    if (!swarm) throw new Error('BROKER_ORCHESTRATOR=swarm needs DOCKER_HOST to be a Swarm manager (docker swarm init, or a manager of an existing Swarm)');
    this.managerNodeId = await this.manager.ownNodeId();
  }

  labels(instance: Instance): Record<string, string> {
    return instanceLabels(this.config.brokerId, instance);
  }

  // Placement

  /** Every node, with what placement needs: its free resources come from the store, its usability from here. */
  async candidates(): Promise<PlacementNode[]> {
    // Never from the cache: a node drained a moment ago must not get the next instance.
    this.nodeList = undefined;
    return (await this.nodes()).map((node) => ({
      id: node.id,
      hostname: node.hostname,
      availability: node.availability,
      state: node.state,
      memoryBytes: node.memoryBytes,
      labels: node.labels,
      advertisedHost: node.labels[NODE_LABEL.advertiseHost] || node.address,
      unusable:
        node.labels[NODE_LABEL.engine] || node.id === this.managerNodeId
          ? undefined
          : `no ${NODE_LABEL.engine} label, so the broker cannot run the offering's scripts there`,
    }));
  }

  /** Free-port check on the node: something answering on its address there means the port is taken. */
  async portIsFree(port: number, instance: InstanceRecord): Promise<boolean> {
    if (!instance.advertisedHost) return true;
    return !(await publishedPortAnswers(instance.advertisedHost, port));
  }

  // Lifecycle

  async start(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    const node = await this.nodeOf(instance);
    await this.imageOnNode(definition, node, progress);
    signal.throwIfAborted();
    await progress(`Creating the service on node ${node.hostname}; its volume lives there.`);
    const tls = await this.tlsSecrets(definition, instance);
    await this.manager.createService(this.plan(definition, instance, instance.planId, tls.secrets));
    await this.untilReady(definition, instance, undefined, signal, progress);
    await tls.settle();
  }

  /** Swarm replaces the task on the same node with the same volume; returns once it accepts a login again. */
  async restart(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    const before = await this.manager.inspectService(instance.containerName);
    if (!before) throw new Error(`the service ${instance.containerName} is missing`);
    await this.manager.restartService(instance.containerName);
    await this.untilReady(definition, instance, before.containerId, signal, progress);
  }

  /** A restart on request, the Swarm way (docker service update --force): a new task on the same node and volume. */
  async restartInstance(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    await progress('Replacing the task on its node (service update --force); the data volume and ports stay.');
    await this.restart(definition, instance, signal, progress);
  }

  /** A new image or settings: Swarm replaces the task; the volume and ports stay. */
  async recreate(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void> {
    const before = await this.manager.inspectService(instance.containerName);
    if (!before) return this.start(definition, instance, signal, progress);
    await this.imageOnNode(definition, await this.nodeOf(instance), progress);
    await progress('Replacing the task; the data volume and ports stay.');
    const tls = await this.tlsSecrets(definition, instance);
    await this.manager.updateService(this.plan(definition, instance, instance.planId, tls.secrets));
    await this.untilReady(definition, instance, before.containerId, signal, progress);
    await tls.settle();
  }

  /** Swarm applies new limits by replacing the task (a short restart on the same node), unlike a single engine. */
  async applyLimits(definition: ServiceDefinition, instance: InstanceRecord, planId: string): Promise<void> {
    const before = await this.manager.inspectService(instance.containerName);
    const tls = await this.tlsSecrets(definition, instance);
    await this.manager.updateService(this.plan(definition, instance, planId, tls.secrets));
    const signal = AbortSignal.timeout((definition.container.readyTimeoutSeconds + 60) * 1000);
    await this.untilReady(definition, { ...instance, planId }, before?.containerId, signal, async () => {});
    await tls.settle();
  }

  /**
   * A renewed certificate: its files as new secrets, the task replaced by one that mounts them (a short restart on the
   * same node and volume), then the old secrets removed.
   */
  async replaceTls(definition: ServiceDefinition, instance: InstanceRecord, files: TlsFiles, signal: AbortSignal): Promise<void> {
    // A node that is down or a task that is not running gets the files when it starts again (the next pass retries).
    const running = await this.locate(instance);
    const service = await this.manager.inspectService(instance.containerName);
    const secrets = await this.secrets.secretsFor(instance, files);
    // An earlier attempt may have replaced the task already and failed after: the running task then has these files.
    if (!secrets.every((secret) => service?.secretIds.includes(secret.id))) {
      await this.manager.updateService(this.plan(definition, instance, instance.planId, secrets));
      await this.untilReady(definition, instance, running.container, signal, async () => {});
    }
    await this.secrets.removeOthers(instance, secrets);
  }

  async configure(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    await this.scripts.run(await this.locate(instance), definition, instance, 'configure', {}, signal);
  }

  async bind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal) {
    return this.scripts.bind(await this.locate(instance), definition, instance, binding, signal);
  }

  async backup(definition: ServiceDefinition, instance: InstanceRecord, options: { timeoutSeconds: number; signal: AbortSignal }) {
    return this.scripts.stream(await this.locate(instance), definition, instance, 'backup', options);
  }

  async restore(
    definition: ServiceDefinition,
    instance: InstanceRecord,
    dump: Readable,
    options: { timeoutSeconds: number; signal: AbortSignal },
  ): Promise<void> {
    const run = await this.scripts.stream(await this.locate(instance), definition, instance, 'restore', { ...options, input: dump });
    run.stdout.resume();
    await run.finished;
  }

  async unbind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<void> {
    await this.scripts.unbind(await this.locate(instance), definition, instance, binding, signal);
  }

  /** Removes the service, then its containers and volume on its node; a node that is down makes this fail clearly. */
  async destroy(instance: InstanceRecord): Promise<void> {
    this.nodeList = undefined;
    const node = instance.node ? (await this.nodes()).find((candidate) => candidate.id === instance.node) : undefined;
    // Nothing is touched while the node is down: the instance stays whole, and the deprovision can be tried again.
    if (node && node.state !== 'ready') {
      throw new Error(`its node ${node.hostname} is ${node.state}, so its data volume cannot be removed; try again when the node is back`);
    }
    await this.manager.removeService(instance.containerName);
    await this.secrets.removeOthers(instance);
    // Never placed, or its node left the Swarm for good, and its volume with it.
    if (!node) return;
    try {
      const engine = this.engineOf(node);
      let inUse: unknown;
      await waitFor(
        async () => {
          // Swarm stops the task's container itself, but only after its grace period; the service is gone, so no wait.
          // A task whose start the node's agent had begun may still appear after the removal: each round removes it.
          for (const container of await engine.listContainers({ [LABEL.instance]: instance.id, [LABEL.broker]: this.config.brokerId })) {
            await engine.removeContainer(container.id);
          }
          try {
            await engine.removeVolume(instance.volumeName);
            return true;
          } catch (error) {
            inUse = error;
            return undefined;
          }
        },
        { intervalMs: 1_000, timeoutMs: 30_000, onTimeout: () => inUse as Error },
      );
    } catch (error) {
      throw new Error(`the data volume on node ${node.hostname} could not be removed (${(error as Error).message}); try again when the node is back`, {
        cause: error,
      });
    }
  }

  // What runs where

  async inspect(instance: Instance): Promise<ContainerSummary | undefined> {
    const service = await this.manager.inspectService(instance.containerName);
    if (!service) return undefined;
    const node = (await this.nodes()).find((candidate) => candidate.id === (service.node ?? instance.node));
    return summary(service, instance, node);
  }

  async locate(instance: Instance): Promise<ContainerTarget> {
    const service = await this.manager.inspectService(instance.containerName);
    if (!service) throw new Error(`the service ${instance.containerName} is missing`);
    const node = await this.nodeOf(instance, service);
    if (node.state !== 'ready') throw new Error(`its node ${node.hostname} is ${node.state}`);
    if (service.taskState !== 'running' || !service.containerId) throw new Error(`its task is ${service.taskState ?? 'not scheduled'}`);
    return { engine: this.engineOf(node), container: service.containerId };
  }

  async volumeExists(instance: InstanceRecord): Promise<boolean> {
    if (!instance.node) return false;
    const node = await this.nodeOf(instance);
    // A node that cannot be asked is not proof of a lost volume: the reconciler reports the node instead.
    if (node.state !== 'ready') return true;
    return this.engineOf(node)
      .volumeExists(instance.volumeName)
      .catch(() => true);
  }

  /** No event stream spans a Swarm's nodes; the reconciler's periodic pass (BROKER_RECONCILE_SECONDS) covers them. */
  async watch(_onEvent: (event: InstanceEvent) => void, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }

  // Recovery

  /** The broker's services, and its volumes on every node whose engine answers. */
  async inventory(): Promise<{ workloads: InventoryObject[]; volumes: InventoryObject[]; unreachable: string[] }> {
    const labels = { [LABEL.broker]: this.config.brokerId, [LABEL.role]: 'instance' };
    const services = await this.manager.listServices(labels);
    const volumes: InventoryObject[] = [];
    const unreachable: string[] = [];
    for (const node of await this.nodes()) {
      if (node.state !== 'ready' || (!node.labels[NODE_LABEL.engine] && node.id !== this.managerNodeId)) {
        unreachable.push(node.hostname);
        continue;
      }
      try {
        for (const volume of await this.engineOf(node).listVolumes(labels)) {
          volumes.push({ name: volume.name, instanceId: volume.labels[LABEL.instance], node: node.id });
        }
      } catch {
        unreachable.push(node.hostname);
      }
    }
    return { workloads: services.map((service) => ({ name: service.name, instanceId: service.labels[LABEL.instance] })), volumes, unreachable };
  }

  async removeWorkload(object: InventoryObject): Promise<void> {
    await this.manager.removeService(object.name);
    if (object.instanceId) await this.secrets.removeOthers({ id: object.instanceId });
  }

  async removeVolume(object: InventoryObject): Promise<void> {
    const node = (await this.nodes()).find((candidate) => candidate.id === object.node);
    if (node) await this.engineOf(node).removeVolume(object.name);
  }

  // Helpers

  /**
   * The TLS secrets a new task of the instance mounts (its current certificate's; none for an offering without TLS),
   * and what to do once the task runs: record the certificate delivered, remove the instance's other secrets.
   */
  private async tlsSecrets(definition: ServiceDefinition, instance: InstanceRecord): Promise<{ secrets?: SecretFile[]; settle(): Promise<void> }> {
    const tls = await this.tls?.current(definition, instance);
    if (!tls) return { settle: async () => {} };
    const secrets = await this.secrets.secretsFor(instance, tls);
    return {
      secrets,
      settle: async () => {
        await tls.delivered();
        await this.secrets.removeOthers(instance, secrets);
      },
    };
  }

  private plan(definition: ServiceDefinition, instance: Instance, planId: string, secrets?: SecretFile[]): ServicePlan {
    const labels = this.labels({ ...instance, planId });
    return {
      name: instance.containerName,
      image: imageTag(definition),
      labels,
      node: instance.node!,
      publish: [
        { containerPort: definition.container.port, hostPort: instance.hostPort! },
        ...publishedExtraPorts(definition, instance).map(([name, containerPort]) => ({ containerPort, hostPort: instance.extraHostPorts![name]! })),
      ],
      volume: { name: instance.volumeName, path: definition.container.dataPath, labels },
      limits: containerLimits(definition.limits.get(planId)!),
      capDrop: definition.container.capDrop,
      capAdd: definition.container.capAdd,
      stopTimeoutSeconds: definition.container.stopTimeoutSeconds,
      secrets,
    };
  }

  /** Waits for a running task (another container than `previous`), then for the service inside it, as a single engine does. */
  private async untilReady(
    definition: ServiceDefinition,
    instance: InstanceRecord,
    previous: string | undefined,
    signal: AbortSignal,
    progress: Progress,
  ): Promise<void> {
    await progress(`Starting ${displayName(definition)}.`);
    let last = '';
    const target = await waitFor(
      async () => {
        const service = await this.manager.inspectService(instance.containerName);
        if (!service) throw new Error(`the service ${instance.containerName} disappeared while starting`);
        const message = service.taskMessage ?? '';
        last = `${service.taskState ?? 'no task'}${message ? `: ${message}` : ''}`;
        // Replacing a task, the old one holds the ports until it is gone: the scheduler says so and waits.
        if (PORT_TAKEN.test(message) && !previous) throw new PortTakenError(message);
        if (service.taskState === 'running' && service.containerId && service.containerId !== previous) {
          return { engine: this.engineOf(await this.nodeOf(instance, service)), container: service.containerId };
        }
        if (service.taskState && !STARTING.has(service.taskState) && service.taskState !== 'running' && service.desiredState !== 'running') {
          throw new Error(`the task ${service.taskState} while starting${message ? `: ${message}` : ''}; see its logs`);
        }
        return undefined;
      },
      {
        intervalMs: 250,
        timeoutMs: TASK_START_SECONDS * 1000,
        signal,
        onTimeout: () => new Error(`the service's task did not run within ${TASK_START_SECONDS} s (${last})`),
      },
    );
    await this.scripts.waitReady(async () => target, definition, instance, signal);
    const published = this.waitForPublishedPort(instance, probedHostPort(definition, instance)!, signal);
    published.catch(() => {}); // awaited below; a failure must not go unhandled meanwhile
    await progress('Setting up the administrator and the database.');
    await this.scripts.run(target, definition, instance, 'setup', {}, signal);
    await progress('Checking that the service accepts a login through the published port.');
    await this.scripts.run(target, definition, instance, 'check', {}, signal);
    await published;
  }

  /** The main port, or the TLS port where require_tls closed the plain one. */
  private async waitForPublishedPort(instance: InstanceRecord, port: number, signal: AbortSignal): Promise<void> {
    const host = instance.advertisedHost!;
    await waitFor(async () => ((await publishedPortAnswers(host, port)) ? true : undefined), {
      intervalMs: 100,
      timeoutMs: 10_000,
      signal,
      onTimeout: () => new Error(`nothing answers on the published port ${host}:${port}`),
    });
  }

  /** Copies the offering's image to the node unless the node has the very same image (by content id). */
  private async imageOnNode(definition: ServiceDefinition, node: SwarmNode, progress: Progress): Promise<void> {
    const tag = imageTag(definition);
    if (!(await this.images.isCurrent(definition.folder, tag))) {
      await progress(`Building image ${tag} from catalog/${definition.offering.name}/Dockerfile (first use of this recipe; this takes a few minutes).`);
      await this.images.ensure(definition.folder, tag);
    }
    if (node.id === this.managerNodeId && !node.labels[NODE_LABEL.engine]) return;
    const id = await this.local.imageId(tag);
    if (!id) throw new Error(`the image ${tag} is missing on the manager`);
    const key = `${node.id} ${id}`;
    let copy = this.copies.get(key);
    if (!copy) {
      const engine = this.engineOf(node);
      copy = (async () => {
        if ((await engine.imageId(tag)) === id) return;
        await progress(`Copying image ${tag} to node ${node.hostname}.`);
        await this.local.copyImageTo(engine, tag);
      })();
      this.copies.set(key, copy);
      // A failed copy is tried again by the next provision.
      copy.catch(() => this.copies.delete(key));
    }
    await copy;
  }

  private async nodes(): Promise<SwarmNode[]> {
    if (!this.nodeList || Date.now() - this.nodeList.at > NODES_TTL_MS) {
      const nodes = this.manager.nodes();
      this.nodeList = { at: Date.now(), nodes };
      nodes.catch(() => (this.nodeList = undefined));
    }
    return this.nodeList.nodes;
  }

  private async nodeOf(instance: Instance, service?: ServiceState): Promise<SwarmNode> {
    const id = service?.node ?? instance.node;
    const node = (await this.nodes()).find((candidate) => candidate.id === id);
    if (!node) throw new Error(`its Swarm node ${id ?? '(none recorded)'} is no longer part of the Swarm`);
    return node;
  }

  /** The node's own engine: from its io.osb-broker.engine label, or the manager's engine for the manager itself. */
  private engineOf(node: SwarmNode): DockerEngine {
    const url = node.labels[NODE_LABEL.engine];
    if (!url) {
      if (node.id === this.managerNodeId) return this.local;
      throw new Error(`node ${node.hostname} has no ${NODE_LABEL.engine} label, so the broker cannot reach its engine`);
    }
    let engine = this.engines.get(url);
    if (!engine) {
      engine = new DockerEngine(engineOptions({ url, tlsDir: this.config.nodeTlsDir }));
      this.engines.set(url, engine);
    }
    return engine;
  }
}

/** The service's task as a container summary; a node that is not ready makes it `unreachable`. */
function summary(service: ServiceState, instance: Instance, node: SwarmNode | undefined): ContainerSummary {
  const base = {
    id: service.containerId ?? service.id,
    name: service.name,
    image: service.image,
    labels: service.labels,
    env: [],
    restartCount: Math.max(0, service.taskCount - 1),
    createdAt: service.createdAt,
    hostPort: instance.hostPort,
  };
  if (!node || node.state !== 'ready') {
    const why = node ? `its node ${node.hostname} is ${node.state}` : 'its node has left the Swarm';
    return { ...base, running: false, status: 'unreachable', error: `${why}; it runs again when the node is back`, finishedAt: service.taskUpdatedAt };
  }
  const state = service.taskState ?? 'pending';
  if (state === 'running') return { ...base, running: true, status: 'running', startedAt: service.taskUpdatedAt };
  if (STARTING.has(state) || service.desiredState === 'running') {
    return { ...base, running: false, status: 'restarting', error: service.taskMessage, finishedAt: service.taskUpdatedAt };
  }
  return { ...base, running: false, status: 'exited', error: service.taskMessage, finishedAt: service.taskUpdatedAt };
}
