// The Swarm half of the Docker adapter: nodes, services and tasks, spoken to a Swarm manager. Containers, exec, logs
// and volumes of a node are reached through that node's own engine (a DockerEngine), not through here.
import Docker from 'dockerode';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { ContainerLimits } from './types.js';

const statusOf = (error: unknown) => (error as { statusCode?: number }).statusCode;

/** A Swarm node as placement and health need it. */
export interface SwarmNode {
  id: string;
  hostname: string;
  role: 'manager' | 'worker';
  /** The operator's choice: only `active` nodes get new instances; `drain` moves nothing of ours (volumes stay). */
  availability: 'active' | 'pause' | 'drain';
  /** The manager's view: `ready`, `down`, `disconnected` or `unknown`. */
  state: string;
  /** The node's address in the Swarm. */
  address: string;
  labels: Record<string, string>;
  memoryBytes: number;
  nanoCpus: number;
}

/** What one instance service is made of. */
export interface ServicePlan {
  name: string;
  image: string;
  labels: Record<string, string>;
  node: string;
  publish: Array<{ containerPort: number; hostPort: number }>;
  volume: { name: string; path: string; labels: Record<string, string> };
  limits: ContainerLimits;
  capDrop?: string[];
  capAdd?: string[];
  stopTimeoutSeconds?: number;
  /** Swarm secrets the task gets as files (read-only, on tmpfs). */
  secrets?: SecretFile[];
}

/** A Swarm secret mounted into a service's task as a file: at an absolute path (Linux engines allow it), owner and mode as given. */
export interface SecretFile {
  id: string;
  name: string;
  target: string;
  uid: number;
  gid: number;
  mode: number;
}

/** A Swarm secret as listed: never its data, which the API does not return. */
export interface SecretSummary {
  id: string;
  name: string;
  labels: Record<string, string>;
}

/** The service of one instance and its newest task. */
export interface ServiceState {
  id: string;
  name: string;
  labels: Record<string, string>;
  /** The node the placement constraint pins it to. */
  node?: string;
  image: string;
  createdAt: string;
  /** The newest task's state (`running`, `starting`, `pending`, `failed`, `shutdown`, ...), undefined without one. */
  taskState?: string;
  /** The state the orchestrator wants for that task (`running`, `shutdown`). */
  desiredState?: string;
  /** The task's error or message, when it has one. */
  taskMessage?: string;
  taskUpdatedAt?: string;
  /** The task's container on its node; empty before the node created it. */
  containerId?: string;
  /** How many tasks the service has had: the first one plus every restart. */
  taskCount: number;
  /** The ids of the secrets its tasks mount. */
  secretIds: string[];
}

export interface EngineAddress {
  /** tcp://host:port or https://host:port; unix:///path for a socket. */
  url: string;
  /** Folder with ca.pem, cert.pem and key.pem: the engine is then spoken to over TLS and must present a certificate. */
  tlsDir?: string;
}

/** dockerode options for an engine address; TLS when the URL says https or a certificate folder is given. */
export function engineOptions(address: EngineAddress): Docker.DockerOptions {
  const url = new URL(address.url);
  if (url.protocol === 'unix:') return { socketPath: url.pathname };
  const tls = url.protocol === 'https:' || Boolean(address.tlsDir);
  const options: Docker.DockerOptions = {
    protocol: tls ? 'https' : 'http',
    host: url.hostname,
    port: Number(url.port) || (tls ? 2376 : 2375),
  };
  if (address.tlsDir) {
    const read = (name: string) => readFileSync(path.join(address.tlsDir!, name));
    Object.assign(options, { ca: read('ca.pem'), cert: read('cert.pem'), key: read('key.pem') });
  }
  return options;
}

const PLACED_ON = /^node\.id\s*==\s*(\S+)$/;

/** Speaks to a Swarm manager. Nothing outside src/docker sees dockerode's types. */
export class SwarmManager {
  private readonly docker: Docker;

  constructor(options?: Docker.DockerOptions) {
    this.docker = new Docker(options);
  }

  /** The Swarm's id, or undefined when the engine is not a Swarm manager. */
  async swarmId(): Promise<string | undefined> {
    const info = (await this.docker.info()) as { Swarm?: { ControlAvailable?: boolean; Cluster?: { ID?: string } } };
    return info.Swarm?.ControlAvailable ? info.Swarm.Cluster?.ID : undefined;
  }

  /** The id of the node this engine is. */
  async ownNodeId(): Promise<string | undefined> {
    const info = (await this.docker.info()) as { Swarm?: { NodeID?: string } };
    return info.Swarm?.NodeID || undefined;
  }

  async nodes(): Promise<SwarmNode[]> {
    const nodes = (await this.docker.listNodes()) as Array<{
      ID: string;
      Spec?: { Role?: string; Availability?: string; Labels?: Record<string, string> };
      Description?: { Hostname?: string; Resources?: { MemoryBytes?: number; NanoCPUs?: number } };
      Status?: { State?: string; Addr?: string };
      ManagerStatus?: { Addr?: string };
    }>;
    return nodes.map((node) => ({
      id: node.ID,
      hostname: node.Description?.Hostname ?? node.ID,
      role: node.Spec?.Role === 'manager' ? 'manager' : 'worker',
      availability: (node.Spec?.Availability ?? 'active') as SwarmNode['availability'],
      state: node.Status?.State ?? 'unknown',
      // A manager's Status.Addr may read 0.0.0.0 on some engines; its advertise address is then the one to use.
      address: node.Status?.Addr && node.Status.Addr !== '0.0.0.0' ? node.Status.Addr : (node.ManagerStatus?.Addr?.replace(/:\d+$/, '') ?? ''),
      labels: node.Spec?.Labels ?? {},
      memoryBytes: node.Description?.Resources?.MemoryBytes ?? 0,
      nanoCpus: node.Description?.Resources?.NanoCPUs ?? 0,
    }));
  }

  /** Creates the service unless one of that name exists (names are unique per instance). */
  async createService(plan: ServicePlan): Promise<void> {
    try {
      await this.docker.createService(serviceSpec(plan));
    } catch (error) {
      if (statusOf(error) !== 409) throw error;
    }
  }

  /** Replaces what a service runs (image, limits); Swarm then replaces its task, keeping node and volume. */
  async updateService(plan: ServicePlan): Promise<void> {
    const service = this.docker.getService(plan.name);
    const current = (await service.inspect()) as { Version: { Index: number } };
    await service.update({ version: current.Version.Index, ...serviceSpec(plan) });
  }

  /** Makes Swarm replace the service's task (a restart on the same node, with the same volume). */
  async restartService(name: string): Promise<void> {
    const service = this.docker.getService(name);
    const current = (await service.inspect()) as { Version: { Index: number }; Spec: { TaskTemplate: { ForceUpdate?: number } } };
    const spec = current.Spec;
    spec.TaskTemplate.ForceUpdate = (spec.TaskTemplate.ForceUpdate ?? 0) + 1;
    await service.update({ version: current.Version.Index, ...spec });
  }

  async removeService(name: string): Promise<void> {
    try {
      await this.docker.getService(name).remove();
    } catch (error) {
      if (statusOf(error) !== 404) throw error;
    }
  }

  /**
   * Creates a secret unless one of that name exists (a name holds one content: callers name secrets after what they
   * hold); returns its id. The data is kept encrypted in the Swarm's Raft log and reaches only the nodes of tasks that
   * use it.
   */
  async ensureSecret(name: string, data: Buffer, labels: Record<string, string>): Promise<string> {
    try {
      const created = (await this.docker.createSecret({ Name: name, Labels: labels, Data: data.toString('base64') })) as { id: string };
      return created.id;
    } catch (error) {
      if (statusOf(error) !== 409) throw error;
      return ((await this.docker.getSecret(name).inspect()) as { ID: string }).ID;
    }
  }

  /** Secrets carrying all of these labels. */
  async listSecrets(labels: Record<string, string>): Promise<SecretSummary[]> {
    const filters = { label: Object.entries(labels).map(([key, value]) => `${key}=${value}`) };
    const secrets = (await this.docker.listSecrets({ filters })) as unknown as Array<{ ID: string; Spec: { Name: string; Labels?: Record<string, string> } }>;
    return secrets.map((secret) => ({ id: secret.ID, name: secret.Spec.Name, labels: secret.Spec.Labels ?? {} }));
  }

  /** Removes a secret; false when a service still uses it (Swarm refuses), true when it is gone. */
  async removeSecret(id: string): Promise<boolean> {
    try {
      await this.docker.getSecret(id).remove();
      return true;
    } catch (error) {
      if (statusOf(error) === 404) return true;
      if (/in use/i.test((error as Error).message)) return false;
      throw error;
    }
  }

  async inspectService(name: string): Promise<ServiceState | undefined> {
    let service: RawService;
    try {
      service = (await this.docker.getService(name).inspect()) as RawService;
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw error;
    }
    const tasks = (await this.docker.listTasks({ filters: { service: [service.ID] } })) as RawTask[];
    return serviceState(service, tasks);
  }

  /** Services carrying all of these labels, with their newest tasks. */
  async listServices(labels: Record<string, string>): Promise<ServiceState[]> {
    const filters = { label: Object.entries(labels).map(([key, value]) => `${key}=${value}`) };
    const services = (await this.docker.listServices({ filters })) as RawService[];
    if (services.length === 0) return [];
    const tasks = (await this.docker.listTasks({ filters: { service: services.map((service) => service.ID) } })) as RawTask[];
    return services.map((service) => serviceState(service, tasks));
  }
}

interface RawService {
  ID: string;
  CreatedAt: string;
  Spec: {
    Name: string;
    Labels?: Record<string, string>;
    TaskTemplate: { ContainerSpec: { Image: string; Secrets?: Array<{ SecretID: string }> }; Placement?: { Constraints?: string[] } };
  };
}

interface RawTask {
  ServiceID: string;
  CreatedAt: string;
  UpdatedAt: string;
  DesiredState: string;
  Status: { State: string; Message?: string; Err?: string; ContainerStatus?: { ContainerID?: string } };
}

function serviceState(service: RawService, allTasks: RawTask[]): ServiceState {
  const tasks = allTasks.filter((task) => task.ServiceID === service.ID).sort((a, b) => b.CreatedAt.localeCompare(a.CreatedAt));
  // A task Swarm wants running is the current one; otherwise the newest.
  const task = tasks.find((candidate) => candidate.DesiredState === 'running') ?? tasks[0];
  const node = service.Spec.TaskTemplate.Placement?.Constraints?.map((constraint) => PLACED_ON.exec(constraint)?.[1]).find(Boolean);
  return {
    id: service.ID,
    name: service.Spec.Name,
    labels: service.Spec.Labels ?? {},
    node,
    image: service.Spec.TaskTemplate.ContainerSpec.Image,
    createdAt: service.CreatedAt,
    taskState: task?.Status.State,
    desiredState: task?.DesiredState,
    taskMessage: task?.Status.Err || task?.Status.Message || undefined,
    taskUpdatedAt: task?.UpdatedAt,
    containerId: task?.Status.ContainerStatus?.ContainerID || undefined,
    taskCount: tasks.length,
    secretIds: service.Spec.TaskTemplate.ContainerSpec.Secrets?.map((secret) => secret.SecretID) ?? [],
  };
}

// dockerode's types lag the API (capabilities and pids limits of services came with API 1.41).
function serviceSpec(plan: ServicePlan): Docker.CreateServiceOptions {
  const spec = {
    Name: plan.name,
    Labels: plan.labels,
    TaskTemplate: {
      ContainerSpec: {
        Image: plan.image,
        Labels: plan.labels,
        Mounts: [{ Type: 'volume', Source: plan.volume.name, Target: plan.volume.path, VolumeOptions: { Labels: plan.volume.labels } }],
        StopGracePeriod: (plan.stopTimeoutSeconds ?? 10) * 1e9,
        CapabilityDrop: plan.capDrop,
        CapabilityAdd: plan.capAdd,
        Secrets: plan.secrets?.map((secret) => ({
          SecretID: secret.id,
          SecretName: secret.name,
          File: { Name: secret.target, UID: String(secret.uid), GID: String(secret.gid), Mode: secret.mode },
        })),
      },
      Resources: {
        Limits: { MemoryBytes: plan.limits.memoryBytes, NanoCPUs: plan.limits.nanoCpus, Pids: plan.limits.pids },
        // Plans reserve what they limit, so the scheduler never overcommits a node either.
        Reservations: { MemoryBytes: plan.limits.memoryBytes },
      },
      Placement: { Constraints: [`node.id==${plan.node}`] },
      RestartPolicy: { Condition: 'any', Delay: 1e9 },
    },
    Mode: { Replicated: { Replicas: 1 } },
    EndpointSpec: {
      Mode: 'vip',
      Ports: plan.publish.map((port) => ({ Protocol: 'tcp', TargetPort: port.containerPort, PublishedPort: port.hostPort, PublishMode: 'host' })),
    },
  };
  return spec as unknown as Docker.CreateServiceOptions;
}
