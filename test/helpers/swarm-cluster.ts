// A real multi-node Docker Swarm on one machine, for the Swarm tests: each node is a Docker engine in a container
// (Docker-in-Docker, image images/swarm-node) on a bridge network of this machine's engine, with a fixed address.
//
// Each node is started like
//   docker run -d --name osb-swarm-<cluster>-<i> --hostname osb-swarm-<cluster>-<i>
//     --cap-add=ALL --cap-drop=SYS_RESOURCE --security-opt seccomp=unconfined --security-opt apparmor=unconfined
//     --sysctl net.ipv4.ip_forward=1 -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v osb-swarm-<cluster>-<i>:/var/lib/docker
//     --network osb-swarm-<cluster> --ip <subnet>.<10+i> osb-broker/swarm-node:bookworm
// and each flag is there because (measured on Debian's docker.io 20.10, cgroup v1; --privileged is refused here):
//   --cap-add=ALL               dockerd and runc need mount, netns, iptables, mknod... (what --privileged would give).
//   --cap-drop=SYS_RESOURCE     this machine's engine does not hold CAP_SYS_RESOURCE itself, so asking for it fails
//                               with "unable to apply caps: operation not permitted"; nothing in a node needs it.
//   seccomp=unconfined          the default profile refuses keyctl: runc in the node fails with "unable to join
//                               session keyring".
//   apparmor=unconfined         docker-default denies mount and writes to /sys on machines with AppArmor (no-op here).
//   --sysctl ip_forward=1       /proc/sys is read-only in the node, so its dockerd cannot switch forwarding on itself
//                               (published ports and bridges need it; the default differs between machines).
//   /sys/fs/cgroup rw           read-only otherwise: runc fails with "mkdir /sys/fs/cgroup/cpuset/...: read-only file
//                               system". The node's dockerd puts its containers under /osb-swarm/<node> in the host's
//                               tree (--cgroup-parent, see images/swarm-node/entrypoint.sh), so memory and pids limits
//                               of services work, apart from this machine's own /docker and from the other nodes.
//   volume on /var/lib/docker   overlay2 cannot stack on the container's overlay root; on a volume (the host's ext4)
//                               it can. The volume also keeps the images loaded into a node for the next run.
//   --network, --ip             a bridge network of our own with a fixed subnet (198.18.0.0/15 is in neither Docker's
//                               default address pools nor Swarm's 10.0.0.0/8), and a pinned address (only possible on
//                               such a network): a node restarted after a stop keeps its address, so it comes back as
//                               the same Swarm node at the same address (unpinned, it would take the next free one).
//   --hostname                  the Swarm node's hostname is the container's name.
// Consequences: a node's containers live in the node's pid namespace (they die when the node is stopped or killed)
// but not in its cgroup (a paused node's containers keep running: only its engine freezes).
//
// Everything this creates carries the label io.osb-broker.test=swarm. remove() keeps the image-cache volumes; to
// remove everything, including them:
//   docker rm -f $(docker ps -aq --filter label=io.osb-broker.test=swarm)
//   docker network rm $(docker network ls -q --filter label=io.osb-broker.test=swarm)
//   docker volume rm $(docker volume ls -q --filter label=io.osb-broker.test=swarm)
// and, as root and with no cluster running, the empty cgroups that killed nodes may leave behind:
//   find /sys/fs/cgroup -depth -type d -path '*/osb-swarm*' -delete
//
// OSB_SWARM_KEEP=1 makes remove() leave the nodes running (only the services go), so the next start reuses them.
import Docker from 'dockerode';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { PACKAGE_ROOT } from '../../src/config.js';
import { DockerEngine } from '../../src/docker/engine.js';
import { ImageBuilder } from '../../src/images/builder.js';
import { createLogger } from '../../src/log.js';
import { waitFor } from '../../src/wait.js';

export const TEST_LABEL = 'io.osb-broker.test';
const CLUSTER_LABEL = 'io.osb-broker.swarm-cluster';
const CONFIG_LABEL = 'io.osb-broker.swarm-config';
/** Node labels the broker's Swarm backend reads. */
export const NODE_LABELS = { engine: 'io.osb-broker.engine', advertiseHost: 'io.osb-broker.advertise-host' } as const;
/** Changing how nodes are started: bump, so running clusters of the old kind are recreated, not reused. */
const RUN_RECIPE = 1;

export interface SwarmClusterOptions {
  /** Part of every name ([a-z0-9-]); a second start with the same name reuses or recreates that cluster. */
  name: string;
  /** Node count, 1 to 9: the first is the (only) manager, the others are workers. Default 3. */
  nodes?: number;
  /** A /24 of this machine (x.y.z.0/24); default $OSB_SWARM_SUBNET, else 198.18.<from the name>.0/24. */
  subnet?: string;
  /** Swarm's dispatcher heartbeat: a silent node is `down` after 2-3 of them (measured: 11-14 s at 5, 2-4 s at 1). Default 5, Swarm's own. */
  heartbeatSeconds?: number;
  /** Progress lines (image build, reuse, recreate). */
  log?: (line: string) => void;
}

export interface SwarmClusterNode {
  /** The node's container name and hostname, e.g. osb-swarm-demo-2. */
  name: string;
  /** Its address on the bridge network: Swarm address, engine address and where host-mode ports are published. */
  ip: string;
  role: 'manager' | 'worker';
  swarmNodeId: string;
  /** tcp://<ip>:2375, also the node label io.osb-broker.engine. */
  engineUrl: string;
  /** A client of the node's own engine. */
  engine: Docker;
}

export interface ImageLoad {
  node: string;
  /** True when the node already had the image (same image ID) and nothing was sent. */
  skipped: boolean;
  /** Bytes of `docker save` output streamed into the node (0 when skipped). */
  bytes: number;
  ms: number;
}

/** How a node's engine is made to look down: SIGKILL (a crash), docker stop (dockerd shuts down), or a frozen engine. */
export type StopMode = 'kill' | 'stop' | 'pause';

export interface SwarmCluster {
  name: string;
  subnet: string;
  /** The manager's engine API, tcp://<ip>:2375: what the broker gets as DOCKER_HOST. */
  managerUrl: string;
  /** A client of the manager's engine (Swarm API). */
  manager: Docker;
  /** In order: nodes[0] is the manager. */
  nodes: SwarmClusterNode[];
  /** How this start went: reused a running cluster or not, whether the node image was built, and durations. */
  startup: { reused: boolean; builtImage: boolean; ms: { image: number; nodes: number; swarm: number; total: number } };
  /** A node by name; throws for an unknown one. */
  node(name: string): SwarmClusterNode;
  /** Streams `docker save` of this machine's `tag` into the nodes' engines (all when `nodes` is omitted), skipping those that have the same image ID. */
  loadImage(tag: string, nodes?: string[]): Promise<ImageLoad[]>;
  /** Makes a node's engine unreachable (default `kill`); Swarm reports the node `down` after a few heartbeats. */
  stopNodeEngine(name: string, mode?: StopMode): Promise<void>;
  /**
   * Starts (or unpauses) a node again, same address and Swarm membership; resolves when Swarm reports it `ready` (for
   * the manager: when every running node is `ready` again). Returns the ms that took.
   */
  startNodeEngine(name: string): Promise<number>;
  /** The manager's view of a node: state (`ready`, `down`, ...) and availability (`active`, `pause`, `drain`). */
  nodeStatus(name: string): Promise<{ state: string; availability: string; labels: Record<string, string> }>;
  /** Polls the manager until the node's state is `state`; returns the ms waited. */
  waitForNodeState(name: string, state: string, timeoutMs?: number): Promise<number>;
  /** Sets the node's availability to `drain`: Swarm moves its tasks off and places nothing new there. */
  drain(name: string): Promise<void>;
  /** Sets the node's availability back to `active`. */
  activate(name: string): Promise<void>;
  /** Removes every Swarm service of the cluster and waits until their containers are gone. */
  removeServices(): Promise<void>;
  /** Removes the services, the nodes' containers and the network; keeps the image-cache volumes. */
  remove(): Promise<void>;
}

const ENGINE_PORT = 2375;
const SWARM_PORT = 2377;
const NODE_IMAGE = `${process.env.BROKER_IMAGE_PREFIX || 'osb-broker/'}swarm-node:bookworm`;
const NODE_IMAGE_DIR = path.join(PACKAGE_ROOT, 'images', 'swarm-node');

/** Starts (or reuses) a Swarm of `nodes` Docker-in-Docker engines; see the top of this file. */
export async function startSwarmCluster(options: SwarmClusterOptions): Promise<SwarmCluster> {
  const started = Date.now();
  const log = options.log ?? (() => {});
  const name = options.name;
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(name)) throw new Error(`swarm cluster name must be [a-z0-9-], at most 31 characters: "${name}"`);
  const count = options.nodes ?? 3;
  if (!Number.isInteger(count) || count < 1 || count > 9) throw new Error(`a swarm cluster has 1 to 9 nodes, not ${count}`);
  const subnet = options.subnet ?? process.env.OSB_SWARM_SUBNET ?? defaultSubnet(name);
  const prefix = /^(\d{1,3}\.\d{1,3}\.\d{1,3})\.0\/24$/.exec(subnet)?.[1];
  if (!prefix) throw new Error(`swarm cluster subnet must be a /24 such as 198.18.7.0/24, not "${subnet}"`);
  const heartbeatSeconds = options.heartbeatSeconds ?? 5;

  const host = new Docker();
  const networkName = `osb-swarm-${name}`;
  const specs = Array.from({ length: count }, (_, i) => ({
    name: `osb-swarm-${name}-${i + 1}`,
    ip: `${prefix}.${11 + i}`,
    role: i === 0 ? ('manager' as const) : ('worker' as const),
  }));

  // The node image, through the project's own builder (rebuilt when anything in images/swarm-node changes).
  const imageStarted = Date.now();
  const builder = new ImageBuilder(new DockerEngine(), path.join(PACKAGE_ROOT, 'scripts'), createLogger('warn'), process.env.BASE_IMAGE || undefined);
  const builtImage = await builder.ensure(NODE_IMAGE_DIR, NODE_IMAGE, (line) => {
    if (/^(Step \d+\/\d+|Successfully)/.test(line)) log(`swarm-node image: ${line}`);
  });
  const imageId = (await host.getImage(NODE_IMAGE).inspect()).Id;
  const imageMs = Date.now() - imageStarted;
  const config = createHash('sha256').update(JSON.stringify({ RUN_RECIPE, imageId, subnet, count, heartbeatSeconds })).digest('hex').slice(0, 16);
  const labels = { [TEST_LABEL]: 'swarm', [CLUSTER_LABEL]: name };

  const engineOf = (ip: string) => new Docker({ protocol: 'http', host: ip, port: ENGINE_PORT });
  let nodes: SwarmClusterNode[] = specs.map((spec) => ({ ...spec, swarmNodeId: '', engineUrl: `tcp://${spec.ip}:${ENGINE_PORT}`, engine: engineOf(spec.ip) }));
  const manager = nodes[0]!.engine;
  const byName = (nodeName: string) => {
    const node = nodes.find((candidate) => candidate.name === nodeName);
    if (!node) throw new Error(`no node ${nodeName} in swarm cluster ${name} (${nodes.map((n) => n.name).join(', ')})`);
    return node;
  };

  const nodesStarted = Date.now();
  let reused = false;
  let swarmMs = 0;
  const current = await healthyCluster(host, manager, networkName, subnet, specs, config, labels);
  if (current) {
    reused = true;
    nodes = nodes.map((node) => ({ ...node, swarmNodeId: current.get(node.name)! }));
    log(`swarm cluster ${name}: reusing the running nodes`);
    await removeAllServices(manager, nodes);
  } else {
    await teardown(host, networkName, labels, log);
    await checkSubnetFree(host, subnet, networkName);
    await host.createNetwork({
      Name: networkName,
      Driver: 'bridge',
      CheckDuplicate: true,
      IPAM: { Driver: 'default', Config: [{ Subnet: subnet, Gateway: `${prefix}.1` }] },
      Labels: labels,
    });
    await Promise.all(nodes.map((node) => startNodeContainer(host, node, networkName, { ...labels, [CONFIG_LABEL]: config })));
    await Promise.all(nodes.map((node) => waitForEngine(node.ip, 60_000)));
    log(`swarm cluster ${name}: ${count} engine(s) answering ${Date.now() - nodesStarted} ms after the start`);
    for (const node of nodes) {
      const info = (await node.engine.info()) as { Driver?: string };
      if (info.Driver !== 'overlay2') throw new Error(`swarm node ${node.name} uses the storage driver ${info.Driver}, not overlay2`);
    }
    // A node's volume may hold the Swarm state, containers and volumes of an earlier cluster: only images are kept.
    const resetStarted = Date.now();
    await Promise.all(nodes.map((node) => resetEngine(node.engine)));
    log(`swarm cluster ${name}: engines reset in ${Date.now() - resetStarted} ms`);
    const swarmStarted = Date.now();
    nodes = await formSwarm(nodes, heartbeatSeconds);
    swarmMs = Date.now() - swarmStarted;
  }
  const nodesMs = Date.now() - nodesStarted - swarmMs;

  const nodeStatus = async (nodeName: string) => {
    const node = (await manager.getNode(byName(nodeName).swarmNodeId).inspect()) as SwarmNodeInfo;
    return { state: node.Status?.State ?? 'unknown', availability: node.Spec?.Availability ?? 'active', labels: node.Spec?.Labels ?? {} };
  };
  const waitForNodeState = async (nodeName: string, state: string, timeoutMs = 60_000) => {
    const since = Date.now();
    let last = '';
    await waitFor(
      async () => {
        try {
          last = (await nodeStatus(nodeName)).state;
        } catch (error) {
          last = `manager not answering: ${(error as Error).message}`;
        }
        return last === state || undefined;
      },
      { intervalMs: 200, timeoutMs, onTimeout: () => new Error(`swarm node ${nodeName} not ${state} after ${timeoutMs} ms (last: ${last})`) },
    );
    return Date.now() - since;
  };
  const setAvailability = async (nodeName: string, availability: 'active' | 'drain') => {
    await updateNodeSpec(manager, byName(nodeName).swarmNodeId, (spec) => ({ ...spec, Availability: availability }));
  };

  return {
    name,
    subnet,
    managerUrl: nodes[0]!.engineUrl,
    manager,
    nodes,
    startup: { reused, builtImage, ms: { image: imageMs, nodes: nodesMs, swarm: swarmMs, total: Date.now() - started } },
    node: byName,
    loadImage: (tag, nodeNames) => loadImage(host, tag, nodeNames ? nodeNames.map(byName) : nodes),
    async stopNodeEngine(nodeName, mode = 'kill') {
      const container = host.getContainer(byName(nodeName).name);
      if (mode === 'pause') await container.pause();
      else if (mode === 'stop') await container.stop({ t: 10 });
      else await container.kill();
    },
    async startNodeEngine(nodeName) {
      const since = Date.now();
      const node = byName(nodeName);
      const container = host.getContainer(node.name);
      const state = (await container.inspect()).State;
      if (state.Paused) await container.unpause();
      else if (!state.Running) await container.start();
      const address = (await container.inspect()).NetworkSettings.Networks[networkName]?.IPAddress;
      if (address !== node.ip) throw new Error(`swarm node ${node.name} came back at ${address}, not ${node.ip}`);
      await waitForEngine(node.ip, 60_000);
      if (node.role === 'manager') {
        // A restarted manager knows no node's state until it has heard from it: until then the workers read `unknown`.
        await waitForManager(manager, 60_000);
        for (const other of nodes) {
          const { State } = await host.getContainer(other.name).inspect();
          if (State.Running && !State.Paused) await waitForNodeState(other.name, 'ready');
        }
      } else await waitForNodeState(nodeName, 'ready');
      return Date.now() - since;
    },
    nodeStatus,
    waitForNodeState,
    drain: (nodeName) => setAvailability(nodeName, 'drain'),
    activate: (nodeName) => setAvailability(nodeName, 'active'),
    removeServices: () => removeAllServices(manager, nodes),
    async remove() {
      if (process.env.OSB_SWARM_KEEP === '1') {
        log(`swarm cluster ${name}: OSB_SWARM_KEEP=1, leaving the nodes running (services removed)`);
        await removeAllServices(manager, nodes).catch(() => {});
        return;
      }
      await teardown(host, networkName, labels, log);
    },
  };
}

interface SwarmNodeInfo {
  ID: string;
  Version?: { Index?: number };
  Spec?: { Role?: string; Availability?: string; Labels?: Record<string, string>; Name?: string };
  Description?: { Hostname?: string };
  Status?: { State?: string; Addr?: string };
}

interface SwarmInfo {
  Driver?: string;
  Swarm?: { LocalNodeState?: string; NodeID?: string; ControlAvailable?: boolean; Cluster?: { ID?: string } };
}

/** 198.18.0.0/15 is reserved for benchmarking: neither Docker's default address pools nor Swarm's 10.0.0.0/8 use it. */
function defaultSubnet(name: string): string {
  return `198.18.${createHash('sha256').update(name).digest()[0]}.0/24`;
}

async function startNodeContainer(host: Docker, node: SwarmClusterNode, networkName: string, labels: Record<string, string>): Promise<void> {
  // The image cache: created once (creating an existing volume returns it), kept by remove().
  await host.createVolume({ Name: node.name, Labels: { [TEST_LABEL]: labels[TEST_LABEL]!, [CLUSTER_LABEL]: labels[CLUSTER_LABEL]! } });
  const container = await host.createContainer({
    name: node.name,
    Hostname: node.name,
    Image: NODE_IMAGE,
    Labels: labels,
    HostConfig: {
      CapAdd: ['ALL'],
      CapDrop: ['SYS_RESOURCE'],
      SecurityOpt: ['seccomp=unconfined', 'apparmor=unconfined'],
      Sysctls: { 'net.ipv4.ip_forward': '1' },
      Binds: ['/sys/fs/cgroup:/sys/fs/cgroup:rw'],
      Mounts: [{ Type: 'volume', Source: node.name, Target: '/var/lib/docker' }],
      NetworkMode: networkName,
      LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '2' } },
    },
    NetworkingConfig: { EndpointsConfig: { [networkName]: { IPAMConfig: { IPv4Address: node.ip } } } },
  });
  await container.start();
}

/** The network's subnet must not overlap another network's (its creation would fail with a vaguer message). */
async function checkSubnetFree(host: Docker, subnet: string, networkName: string): Promise<void> {
  for (const network of await host.listNetworks()) {
    if (network.Name === networkName) continue;
    for (const config of network.IPAM?.Config ?? []) {
      if (config.Subnet && cidrsOverlap(config.Subnet, subnet)) {
        throw new Error(
          `swarm cluster subnet ${subnet} overlaps network ${network.Name} (${config.Subnet}); choose another with the subnet option or OSB_SWARM_SUBNET`,
        );
      }
    }
  }
}

function cidrsOverlap(a: string, b: string): boolean {
  const parse = (cidr: string) => {
    const [address, bits] = cidr.split('/');
    const octets = (address ?? '').split('.').map(Number);
    if (octets.length !== 4 || octets.some((octet) => Number.isNaN(octet))) return undefined; // IPv6: not ours
    const value = octets.reduce((sum, octet) => sum * 256 + octet, 0);
    const size = 2 ** (32 - Number(bits ?? 32));
    return { start: Math.floor(value / size) * size, end: Math.floor(value / size) * size + size };
  };
  const x = parse(a);
  const y = parse(b);
  return Boolean(x && y && x.start < y.end && y.start < x.end);
}

/**
 * The running cluster when it is what this start asks for and healthy: network and every node container present and
 * running (not paused) with this configuration, every engine answering, one Swarm of exactly these nodes, all `ready`.
 * Returns the Swarm node ids by node name.
 */
async function healthyCluster(
  host: Docker,
  manager: Docker,
  networkName: string,
  subnet: string,
  specs: Array<{ name: string; ip: string }>,
  config: string,
  labels: Record<string, string>,
): Promise<Map<string, string> | undefined> {
  const networks = await host.listNetworks({ filters: { label: [`${CLUSTER_LABEL}=${labels[CLUSTER_LABEL]}`] } });
  if (networks.length !== 1 || networks[0]!.Name !== networkName || networks[0]!.IPAM?.Config?.[0]?.Subnet !== subnet) return undefined;
  const containers = await host.listContainers({ all: true, filters: { label: [`${CLUSTER_LABEL}=${labels[CLUSTER_LABEL]}`] } });
  if (containers.length !== specs.length) return undefined;
  for (const spec of specs) {
    const container = containers.find((candidate) => candidate.Names.includes(`/${spec.name}`));
    if (!container || container.State !== 'running' || container.Labels[CONFIG_LABEL] !== config) return undefined;
    if (container.NetworkSettings?.Networks?.[networkName]?.IPAddress !== spec.ip) return undefined;
  }
  try {
    await Promise.all(specs.map((spec) => waitForEngine(spec.ip, 2_000)));
    const info = (await manager.info()) as SwarmInfo;
    if (!info.Swarm?.ControlAvailable) return undefined;
    const swarmNodes = (await manager.listNodes()) as SwarmNodeInfo[];
    if (swarmNodes.length !== specs.length) return undefined;
    const ids = new Map<string, string>();
    for (const spec of specs) {
      const node = swarmNodes.find((candidate) => candidate.Description?.Hostname === spec.name);
      if (!node || node.Status?.State !== 'ready' || node.Spec?.Labels?.[NODE_LABELS.engine] !== `tcp://${spec.ip}:${ENGINE_PORT}`) return undefined;
      ids.set(spec.name, node.ID);
    }
    return ids;
  } catch {
    return undefined;
  }
}

/** Removes the cluster's node containers (their inner containers first, so no cgroups are left) and network. */
async function teardown(host: Docker, networkName: string, labels: Record<string, string>, log: (line: string) => void): Promise<void> {
  const filter = { label: [`${CLUSTER_LABEL}=${labels[CLUSTER_LABEL]}`] };
  const containers = await host.listContainers({ all: true, filters: filter });
  if (containers.length) log(`swarm cluster ${labels[CLUSTER_LABEL]}: removing ${containers.length} node container(s)`);
  await Promise.all(
    containers.map(async (summary) => {
      const container = host.getContainer(summary.Id);
      if (summary.State === 'paused') await container.unpause();
      if (summary.State === 'running' || summary.State === 'paused') {
        const ip = summary.NetworkSettings?.Networks?.[networkName]?.IPAddress;
        try {
          if (ip) {
            const engine = new Docker({ protocol: 'http', host: ip, port: ENGINE_PORT, timeout: 30_000 });
            await Promise.all((await engine.listContainers({ all: true })).map((inner) => engine.getContainer(inner.Id).remove({ force: true, v: true })));
          }
          // The node's cgroups, now empty (the node's own processes are in this machine's /docker/<id>).
          await execIn(container, ['sh', '-c', 'find /sys/fs/cgroup/*/"osb-swarm/$(hostname)" -depth -type d -exec rmdir {} + 2>/dev/null || true']);
        } catch {
          // An engine that does not answer: its containers die with the node all the same.
        }
      }
      await container.remove({ force: true });
    }),
  );
  for (const network of await host.listNetworks({ filters: filter })) await host.getNetwork(network.Id).remove();
}

async function execIn(container: Docker.Container, cmd: string[]): Promise<void> {
  const exec = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({});
  stream.resume();
  await new Promise<void>((resolve, reject) => {
    stream.once('end', resolve);
    stream.once('error', reject);
  });
}

async function waitForEngine(ip: string, timeoutMs: number): Promise<void> {
  await waitFor(
    async () => {
      try {
        const reply = await fetch(`http://${ip}:${ENGINE_PORT}/_ping`, { signal: AbortSignal.timeout(1_000) });
        return reply.ok || undefined;
      } catch {
        return undefined;
      }
    },
    { intervalMs: 100, timeoutMs, onTimeout: () => new Error(`the Docker engine at ${ip}:${ENGINE_PORT} did not answer within ${timeoutMs} ms`) },
  );
}

async function waitForManager(manager: Docker, timeoutMs: number): Promise<void> {
  await waitFor(
    async () => {
      try {
        return ((await manager.info()) as SwarmInfo).Swarm?.ControlAvailable || undefined;
      } catch {
        return undefined;
      }
    },
    { intervalMs: 200, timeoutMs, onTimeout: () => new Error(`the Swarm manager did not take control within ${timeoutMs} ms`) },
  );
}

/** Leaves any Swarm, removes every container, volume and network; keeps the images. */
async function resetEngine(engine: Docker): Promise<void> {
  const info = (await engine.info()) as SwarmInfo;
  if (info.Swarm?.LocalNodeState && info.Swarm.LocalNodeState !== 'inactive') await engine.swarmLeave({ force: true });
  await Promise.all((await engine.listContainers({ all: true })).map((container) => engine.getContainer(container.Id).remove({ force: true, v: true })));
  await engine.pruneVolumes();
  await engine.pruneNetworks();
}

/** swarm init on the first node, join the others as workers, label every node; returns the nodes with their Swarm ids. */
async function formSwarm(nodes: SwarmClusterNode[], heartbeatSeconds: number): Promise<SwarmClusterNode[]> {
  const [first, ...workers] = nodes;
  const manager = first!.engine;
  await manager.swarmInit({
    ListenAddr: `0.0.0.0:${SWARM_PORT}`,
    AdvertiseAddr: `${first!.ip}:${SWARM_PORT}`,
    Spec: { Dispatcher: { HeartbeatPeriod: heartbeatSeconds * 1e9 } },
  });
  const token = ((await manager.swarmInspect()) as { JoinTokens: { Worker: string } }).JoinTokens.Worker;
  await Promise.all(
    workers.map((worker) =>
      worker.engine.swarmJoin({
        ListenAddr: `0.0.0.0:${SWARM_PORT}`,
        AdvertiseAddr: `${worker.ip}:${SWARM_PORT}`,
        RemoteAddrs: [`${first!.ip}:${SWARM_PORT}`],
        JoinToken: token,
      }),
    ),
  );
  const joined = await Promise.all(nodes.map(async (node) => ({ ...node, swarmNodeId: ((await node.engine.info()) as SwarmInfo).Swarm?.NodeID ?? '' })));
  for (const node of joined) {
    if (!node.swarmNodeId) throw new Error(`swarm node ${node.name} has no node id after joining`);
    await updateNodeSpec(manager, node.swarmNodeId, (spec) => ({
      ...spec,
      Labels: { ...spec.Labels, [NODE_LABELS.engine]: node.engineUrl, [NODE_LABELS.advertiseHost]: node.ip },
    }));
  }
  await waitFor(
    async () => {
      const listed = (await manager.listNodes()) as SwarmNodeInfo[];
      return (listed.length === nodes.length && listed.every((node) => node.Status?.State === 'ready')) || undefined;
    },
    { intervalMs: 100, timeoutMs: 60_000, onTimeout: () => new Error('the swarm nodes did not all become ready within 60 s') },
  );
  return joined;
}

/** Read-modify-write of a node's spec; retried when another update got in between (version conflict). */
async function updateNodeSpec(manager: Docker, id: string, change: (spec: NonNullable<SwarmNodeInfo['Spec']>) => SwarmNodeInfo['Spec']): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const node = (await manager.getNode(id).inspect()) as SwarmNodeInfo;
    try {
      await manager.getNode(id).update({ version: node.Version?.Index, ...change(node.Spec ?? {}) });
      return;
    } catch (error) {
      if (attempt >= 5 || !/out of sequence|update out of/i.test((error as Error).message)) throw error;
    }
  }
}

/** Removes every service and waits until no node runs a container of one (so published ports are free again). */
async function removeAllServices(manager: Docker, nodes: SwarmClusterNode[]): Promise<void> {
  const services = await manager.listServices();
  if (!services.length) return;
  await Promise.all(services.map((service) => manager.getService(service.ID).remove()));
  await waitFor(
    async () => {
      for (const node of nodes) {
        try {
          if ((await node.engine.listContainers({ all: true, filters: { label: ['com.docker.swarm.service.id'] } })).length) return undefined;
        } catch {
          // A node that is down has no running tasks to wait for.
        }
      }
      return true;
    },
    { intervalMs: 200, timeoutMs: 60_000, onTimeout: () => new Error('the tasks of removed swarm services were still there after 60 s') },
  );
}

/** One `docker save` of this machine's image, teed into `docker load` on every node that lacks that image ID. */
async function loadImage(host: Docker, tag: string, targets: SwarmClusterNode[]): Promise<ImageLoad[]> {
  const started = Date.now();
  const imageId = (await host.getImage(tag).inspect()).Id;
  const needed: SwarmClusterNode[] = [];
  const results = new Map<string, ImageLoad>();
  for (const node of targets) {
    const present = await node.engine
      .getImage(tag)
      .inspect()
      .then((image) => image.Id)
      .catch(() => undefined);
    if (present === imageId) results.set(node.name, { node: node.name, skipped: true, bytes: 0, ms: 0 });
    else needed.push(node);
  }
  if (needed.length) {
    const source = (await host.getImage(tag).get()) as Readable;
    let bytes = 0;
    source.on('data', (chunk: Buffer) => (bytes += chunk.length));
    const branches = needed.map(() => new PassThrough({ highWaterMark: 1 << 20 }));
    source.once('error', (error) => branches.forEach((branch) => branch.destroy(error)));
    for (const branch of branches) source.pipe(branch);
    await Promise.all(
      needed.map(async (node, i) => {
        const reply = (await node.engine.loadImage(branches[i]!, { quiet: true })) as Readable;
        await new Promise<void>((resolve, reject) => {
          node.engine.modem.followProgress(reply, (error: Error | null, output: Array<{ error?: string }>) => {
            const failed = error?.message ?? output.find((event) => event.error)?.error;
            if (failed) reject(new Error(`loading ${tag} into ${node.name} failed: ${failed}`));
            else resolve();
          });
        });
        const loaded = (await node.engine.getImage(tag).inspect()).Id;
        if (loaded !== imageId) throw new Error(`${node.name} has ${tag} as ${loaded} after loading ${imageId}`);
        // The image the tag named before, if any, is now dangling there.
        await node.engine.pruneImages({ filters: { dangling: ['true'] } });
        results.set(node.name, { node: node.name, skipped: false, bytes, ms: Date.now() - started });
      }),
    );
  }
  return targets.map((node) => results.get(node.name)!);
}
