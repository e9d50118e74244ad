// The broker deployed as deploy/stack.yml says, on a real Swarm of Docker-in-Docker nodes on this machine (see
// test/helpers/swarm-cluster.ts): two broker replicas on the managers, the state Redis, the secrets. The replica that
// holds a provision's lease is killed (SIGKILL) in the middle of it; another broker process finishes it once the lease
// lapses, and Swarm starts the killed one again. Which process takes over is a race between the surviving replica
// and the killed one's replacement (Swarm restarts it 5 s after the kill, so it is up about when the lease lapses);
// the test asserts it is not the killed process and logs which it was.
//
// The cluster has two nodes, both managers: the stack puts the broker replicas on managers, one per manager where
// there are enough. The steps are those of the stack file's header: images on every manager, secrets (created here
// through the manager's API), the node label osb-state=true, DOCKER_GID and BROKER_PUBLIC_URL, then
// `docker stack deploy --resolve-image never -c deploy/stack.yml osb` with the docker CLI at the manager.
//
// Swarm's routing mesh (ingress ports) and service VIPs are made with IPVS. A kernel without it (no ip_vs module,
// as on some VMs) gives tasks that never reach `state-redis` and a published port that answers nothing; then the
// stack is deployed with a second compose file that publishes the broker on each manager's own address (mode: host)
// and lets the replicas find the state Redis by DNS (endpoint_mode: dnsrr). The platform here then speaks to the
// managers in turn, as a load balancer in front of them would. The test says which way it went.
//
// OSB_BROKER_IMAGE=<tag> tests that image instead of building osb-broker/broker with scripts/broker-image.sh.
import test from 'ava';
import type Docker from 'dockerode';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { imageTag } from '../../src/catalog/definition.js';
import { loadCatalog } from '../../src/catalog/load.js';
import { loadConfig, PACKAGE_ROOT } from '../../src/config.js';
import { DockerEngine } from '../../src/docker/engine.js';
import { LABEL } from '../../src/docker/types.js';
import { stateImageTag } from '../../src/embedded-redis.js';
import { ImageBuilder } from '../../src/images/builder.js';
import { createLogger } from '../../src/log.js';
import { OsbClient, provisionBody, type Reply } from '../helpers/osb-client.js';
import { startSwarmCluster, type SwarmCluster, type SwarmClusterNode } from '../helpers/swarm-cluster.js';
import { waitUntil } from '../helpers/wait.js';

const run = promisify(execFile);

const CLUSTER = 'osb-stack';
const NODES = 2;
const STACK = 'osb';
const STACK_FILE = path.join(PACKAGE_ROOT, 'deploy/stack.yml');
const BROKER_SERVICE = `${STACK}_broker`;
const REDIS_SERVICE = `${STACK}_state-redis`;
const STATE_VOLUME = `${STACK}_osb-state`;
/** What the stack file runs: the broker image's :latest and the state Redis of this version. */
const BROKER_IMAGE = 'osb-broker/broker:latest';
const STATE_IMAGE = stateImageTag('osb-broker/');
/** The stack file's defaults: BROKER_PORT, BROKER_REPLICAS, BROKER_ID. */
const PORT = 8080;
const REPLICAS = 2;
const BROKER_ID = 'swarm';
const SECRET_NAMES = ['osb_state_redis_password', 'osb_redis_url', 'osb_broker_encryption_key', 'osb_broker_password'] as const;
const PG = { service: 'd0fc228f-54d1-4bed-8dd0-38c7a33c4500', plan: 'fdc3b78d-156f-4bac-aba4-242250cc5840' };
/** The stack leaves these at the broker's defaults (10 s and 2 s). */
const { leaseSeconds, sweepSeconds } = loadConfig({});

const NO_IPVS_OVERRIDE = `# Written by test/swarm/stack.test.ts: the nodes' kernel has no IPVS, which Swarm's routing mesh and VIPs need.
version: '3.8'
services:
  broker:
    ports:
      - { target: 8080, published: '\${BROKER_PORT:-8080}', protocol: tcp, mode: host }
    deploy:
      endpoint_mode: dnsrr
  state-redis:
    deploy:
      endpoint_mode: dnsrr
`;

let cluster: SwarmCluster;
let managers: SwarmClusterNode[];
let folder: string;
let redisPassword: string;
/** One client per manager address; `platform` asks them in turn, as a load balancer in front of them would. */
let clients: OsbClient[];
/** The instance the tests provision and then deprovision. */
let instanceId: string | undefined;

/** The docker CLI at the manager (or `host`), with exactly `env` besides PATH and HOME. */
async function docker(args: string[], env: Record<string, string> = {}, host = cluster.managerUrl): Promise<string> {
  try {
    const { stdout } = await run('docker', args, {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', DOCKER_HOST: host, ...env },
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout.trim();
  } catch (error) {
    const { stderr, stdout } = error as { stderr?: string; stdout?: string };
    throw new Error(`docker ${args.join(' ')} failed: ${(stderr || stdout || (error as Error).message).trim()}`, { cause: error });
  }
}

/** The docker CLI at this machine's own engine (the nodes are its containers). */
const hostDocker = (args: string[]) => docker(args, {}, process.env.DOCKER_HOST || 'unix:///var/run/docker.sock');

/**
 * A node started on an image-cache volume that still holds an earlier cluster's Swarm state rejoins that Swarm at
 * boot; startSwarmCluster then makes it leave and form a new one, and the engine's network agent (gossip on port
 * 7946) does not survive that: "error in agentInit: ... listen tcp 0.0.0.0:7946: bind: address already in use" in the
 * node's log, after which overlay networks never learn other tasks' names (the brokers fail with `getaddrinfo
 * ENOTFOUND state-redis`). Instance services use no overlay network, so the other Swarm tests do not notice. Unless
 * the cluster is running (and so reused), the Swarm and network state is removed from its volumes; images stay.
 */
async function forgetEarlierSwarm(name: string, count: number, log: (line: string) => void): Promise<void> {
  const nodeImage = `${process.env.BROKER_IMAGE_PREFIX || 'osb-broker/'}swarm-node:bookworm`;
  const names = Array.from({ length: count }, (_, i) => `osb-swarm-${name}-${i + 1}`);
  const running = await Promise.all(names.map((node) => hostDocker(['inspect', '-f', '{{.State.Running}}', node]).catch(() => 'false')));
  if (running.includes('true')) return;
  for (const volume of names) {
    const exists = await hostDocker(['volume', 'inspect', volume]).then(
      () => true,
      () => false,
    );
    if (!exists) continue;
    await hostDocker([
      'run',
      '--rm',
      '--entrypoint',
      'rm',
      '-v',
      `${volume}:/var/lib/docker`,
      nodeImage,
      '-rf',
      '/var/lib/docker/swarm',
      '/var/lib/docker/network',
    ]);
    log(`${volume}: an earlier cluster's Swarm and network state removed (images kept)`);
  }
}

/** A reply from the first replica that answers; connection errors (a replica killed or restarting) move to the next. */
async function platform(call: (client: OsbClient) => Promise<Reply>): Promise<Reply> {
  const failures: string[] = [];
  for (const client of clients) {
    try {
      return await call(client);
    } catch (error) {
      failures.push(`${client.url}: ${(error as Error).message}`);
    }
  }
  throw new Error(`no broker replica answered (${failures.join('; ')})`);
}

async function updateNodeSpec(node: SwarmClusterNode, change: (spec: Record<string, any>) => Record<string, any>): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const current = (await cluster.manager.getNode(node.swarmNodeId).inspect()) as { Version: { Index: number }; Spec: Record<string, any> };
    try {
      await cluster.manager.getNode(node.swarmNodeId).update({ version: current.Version.Index, ...change(current.Spec) });
      return;
    } catch (error) {
      if (attempt >= 5 || !/out of sequence/i.test((error as Error).message)) throw error;
    }
  }
}

interface BrokerTask {
  id: string;
  node: SwarmClusterNode;
  state: string;
  desired: string;
  error?: string;
  containerId?: string;
}

async function brokerTasks(): Promise<BrokerTask[]> {
  const tasks = await cluster.manager.listTasks({ filters: { service: [BROKER_SERVICE] } });
  return tasks.map((task) => ({
    id: task.ID as string,
    node: cluster.nodes.find((node) => node.swarmNodeId === task.NodeID) ?? cluster.nodes[0]!,
    state: task.Status?.State as string,
    desired: task.DesiredState as string,
    error: (task.Status?.Err as string | undefined) || undefined,
    containerId: (task.Status?.ContainerStatus?.ContainerID as string | undefined) || undefined,
  }));
}

/** Every broker container (running or not) on every manager, with its node. */
async function brokerContainers(): Promise<Array<{ id: string; node: SwarmClusterNode; state: string; created: number }>> {
  const all = [];
  for (const node of managers) {
    const listed = await node.engine.listContainers({ all: true, filters: { label: [`com.docker.swarm.service.name=${BROKER_SERVICE}`] } });
    all.push(...listed.map((container) => ({ id: container.Id, node, state: container.State, created: container.Created })));
  }
  return all;
}

/** A container's log as text (the engine multiplexes stdout and stderr into frames with an 8-byte header). */
async function containerLog(engine: Docker, id: string, tail?: number): Promise<string> {
  const raw = await engine.getContainer(id).logs({ stdout: true, stderr: true, follow: false, ...(tail ? { tail } : {}) });
  const parts: Buffer[] = [];
  for (let offset = 0; offset + 8 <= raw.length;) {
    const size = raw.readUInt32BE(offset + 4);
    parts.push(raw.subarray(offset + 8, offset + 8 + size));
    offset += 8 + size;
  }
  return Buffer.concat(parts).toString('utf8');
}

/** What to look at when something does not happen: the broker tasks and the end of each replica's log. */
async function diagnosis(): Promise<string> {
  const lines: string[] = [];
  try {
    for (const task of await brokerTasks()) {
      lines.push(`task ${task.id.slice(0, 12)} on ${task.node.name}: ${task.state} (wants ${task.desired})${task.error ? `: ${task.error}` : ''}`);
    }
    for (const container of await brokerContainers()) {
      const log = await containerLog(container.node.engine, container.id, 15).catch((error: Error) => error.message);
      lines.push(`--- ${container.id.slice(0, 12)} on ${container.node.name} (${container.state}):\n${log.trim()}`);
    }
  } catch (error) {
    lines.push(`(the manager did not answer: ${(error as Error).message})`);
  }
  return lines.join('\n');
}

/** `promise`, or its failure with the diagnosis appended. */
async function explained<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${await diagnosis()}`, { cause: error });
  }
}

/** Who holds an operation's lease (`<hostname>/<pid>/<random>`; a task's hostname is its container id), read in the state Redis. */
async function leaseOwner(operationId: string): Promise<string> {
  const [redis] = await managers[0]!.engine.listContainers({ filters: { label: [`com.docker.swarm.service.name=${REDIS_SERVICE}`], status: ['running'] } });
  if (!redis) throw new Error(`no running ${REDIS_SERVICE} container on ${managers[0]!.name}`);
  return docker(['exec', '-e', 'REDISCLI_AUTH', redis.Id, 'redis-cli', '--no-auth-warning', 'GET', `osb:${BROKER_ID}:lease:${operationId}`], {
    REDISCLI_AUTH: redisPassword,
  });
}

/** Running broker tasks, ready on every manager address: what the stack asks for. */
async function replicasServing(): Promise<BrokerTask[] | undefined> {
  const running = (await brokerTasks()).filter((task) => task.state === 'running' && task.desired === 'running');
  if (running.length !== REPLICAS) return undefined;
  for (const client of clients) {
    const ready = await fetch(`${client.url}/readyz`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
    await ready?.body?.cancel();
    if (ready?.status !== 200) return undefined;
  }
  return running;
}

/** Removes the stack (services, network), its state volume and the secrets; waits until nothing of it runs. */
async function removeStack(log: (line: string) => void): Promise<void> {
  const services = await cluster.manager.listServices({ filters: { label: [`com.docker.stack.namespace=${STACK}`] } });
  if (services.length) log(await docker(['stack', 'rm', STACK]));
  await waitUntil(
    `the ${STACK} stack's services, containers and network to be gone`,
    async () => {
      if ((await cluster.manager.listServices({ filters: { label: [`com.docker.stack.namespace=${STACK}`] } })).length) return undefined;
      for (const node of cluster.nodes) {
        if ((await node.engine.listContainers({ all: true, filters: { label: [`com.docker.stack.namespace=${STACK}`] } })).length) return undefined;
      }
      return (await cluster.manager.listNetworks({ filters: { label: [`com.docker.stack.namespace=${STACK}`] } })).length === 0 || undefined;
    },
    90_000,
    500,
  );
  for (const node of cluster.nodes) {
    await node.engine
      .getVolume(STATE_VOLUME)
      .remove()
      .catch((error: { statusCode?: number }) => {
        if (error.statusCode !== 404) throw error;
      });
  }
  for (const secret of await cluster.manager.listSecrets()) {
    if ((SECRET_NAMES as readonly string[]).includes(secret.Spec?.Name ?? '')) await cluster.manager.getSecret(secret.ID).remove();
  }
}

async function pgRoundTrip(uri: string, value: string): Promise<string> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query('CREATE TABLE IF NOT EXISTS notes (value text)');
    await client.query('INSERT INTO notes VALUES ($1)', [value]);
    const { rows } = await client.query<{ value: string }>('SELECT value FROM notes WHERE value = $1', [value]);
    return rows[0]!.value;
  } finally {
    await client.end();
  }
}

async function deprovision(id: string): Promise<Reply> {
  const accepted = await platform((client) => client.deprovision(id, PG.service, PG.plan));
  if (accepted.status !== 202) throw new Error(`deprovision of ${id} answered ${accepted.status}: ${JSON.stringify(accepted.body)}`);
  return explained(
    waitUntil(
      `the deprovision of ${id} to end`,
      async () => {
        const reply = await platform((client) => client.lastOperation(id, accepted.body.operation)).catch(() => undefined);
        return reply && (reply.status !== 200 || reply.body.state !== 'in progress') ? reply : undefined;
      },
      120_000,
      250,
    ),
  );
}

test.before(async (t) => {
  const started = Date.now();
  const stackText = readFileSync(STACK_FILE, 'utf8');
  for (const image of [BROKER_IMAGE, STATE_IMAGE]) {
    if (!stackText.includes(`image: ${image}`)) throw new Error(`deploy/stack.yml no longer runs ${image}; update this test`);
  }

  // The broker image as `npm run image` makes it (cached: seconds when nothing changed).
  const image =
    process.env.OSB_BROKER_IMAGE ||
    (await run('bash', [path.join(PACKAGE_ROOT, 'scripts/broker-image.sh')], { maxBuffer: 16 * 1024 * 1024 })).stdout.trim().split('\n').pop()!;
  const imageMs = Date.now() - started;
  // Instance images are built FROM the image the broker image was built from (its BASE_IMAGE): the nodes need it too.
  const env = JSON.parse(await hostDocker(['image', 'inspect', '-f', '{{json .Config.Env}}', image])) as string[];
  const baseImage = env.find((entry) => entry.startsWith('BASE_IMAGE='))?.slice('BASE_IMAGE='.length);
  if (!baseImage) throw new Error(`${image} sets no BASE_IMAGE`);
  // The offering used here, built on this machine if its recipe changed (a no-op otherwise).
  const definition = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/').find((candidate) => candidate.offering.id === PG.service)!;
  const offeringImage = imageTag(definition);
  await new ImageBuilder(new DockerEngine(), path.join(PACKAGE_ROOT, 'scripts'), createLogger('warn'), baseImage).ensure(definition.folder, offeringImage);

  await forgetEarlierSwarm(CLUSTER, NODES, (line) => t.log(line));
  cluster = await startSwarmCluster({ name: CLUSTER, nodes: NODES, heartbeatSeconds: 2, log: (line) => t.log(line) });
  t.log(`cluster of ${cluster.nodes.length} nodes in ${cluster.startup.ms.total} ms (reused: ${cluster.startup.reused})`);
  // A kept cluster (OSB_SWARM_KEEP=1) may still hold the stack's network, volume and secrets of an earlier run.
  await removeStack((line) => t.log(line));

  // The second node becomes a manager: the stack places broker replicas on managers, one per manager.
  const second = cluster.nodes[1]!;
  await updateNodeSpec(second, (spec) => ({ ...spec, Role: 'manager' }));
  await waitUntil(
    `${second.name} to be a reachable manager`,
    async () => {
      const info = (await second.engine.info()) as { Swarm?: { ControlAvailable?: boolean } };
      const node = (await cluster.manager.getNode(second.swarmNodeId).inspect()) as { ManagerStatus?: { Reachability?: string } };
      return (info.Swarm?.ControlAvailable && node.ManagerStatus?.Reachability === 'reachable') || undefined;
    },
    60_000,
    200,
  );
  managers = cluster.nodes;

  // 1. Images on every manager (the state Redis only where it runs).
  const loadStarted = Date.now();
  for (const tag of [image, baseImage, offeringImage]) {
    const loads = await cluster.loadImage(
      tag,
      managers.map((node) => node.name),
    );
    t.log(`${tag}: ${loads.map((load) => `${load.node} ${load.skipped ? 'had it' : `${Math.round(load.bytes / 1e6)} MB in ${load.ms} ms`}`).join(', ')}`);
  }
  await cluster.loadImage(STATE_IMAGE, [managers[0]!.name]);
  if (image !== BROKER_IMAGE) {
    const [repo, tag] = [BROKER_IMAGE.slice(0, BROKER_IMAGE.lastIndexOf(':')), BROKER_IMAGE.slice(BROKER_IMAGE.lastIndexOf(':') + 1)];
    for (const node of managers) await node.engine.getImage(image).tag({ repo, tag });
  }
  const loadMs = Date.now() - loadStarted;

  // 2. The secrets, as the header's commands make them (openssl's hex output ends with a newline; *_FILE drops it).
  redisPassword = randomBytes(24).toString('hex');
  const password = randomBytes(24).toString('hex');
  const secrets: Record<(typeof SECRET_NAMES)[number], string> = {
    osb_state_redis_password: redisPassword,
    osb_redis_url: `redis://:${redisPassword}@state-redis:6379/0`,
    osb_broker_encryption_key: `${randomBytes(32).toString('hex')}\n`,
    osb_broker_password: `${password}\n`,
  };
  for (const [name, value] of Object.entries(secrets)) {
    await cluster.manager.createSecret({ Name: name, Data: Buffer.from(value).toString('base64') });
  }

  // 3. The manager that keeps the state (4., the engine labels, startSwarmCluster has set on every node).
  await updateNodeSpec(managers[0]!, (spec) => ({ ...spec, Labels: { ...spec.Labels, 'osb-state': 'true' } }));

  // 5. The Docker socket's group inside the managers, which must be the same on all of them.
  const gids = await Promise.all(managers.map((node) => hostDocker(['exec', node.name, 'stat', '-c', '%g', '/var/run/docker.sock'])));
  if (new Set(gids).size !== 1) throw new Error(`the managers' Docker sockets belong to different groups: ${gids.join(', ')}`);
  const publicUrl = `http://${managers[0]!.ip}:${PORT}`;

  const ipvs = await hostDocker(['exec', managers[0]!.name, 'test', '-e', '/proc/net/ip_vs']).then(
    () => true,
    () => false,
  );
  folder = mkdtempSync(path.join(tmpdir(), 'osb-stack-'));
  const files = ['-c', STACK_FILE];
  if (!ipvs) {
    writeFileSync(path.join(folder, 'no-ipvs.yml'), NO_IPVS_OVERRIDE);
    files.push('-c', path.join(folder, 'no-ipvs.yml'));
    t.log('the kernel has no IPVS (no /proc/net/ip_vs): no routing mesh or VIPs; the broker is published on each manager, state-redis found by DNS');
  }
  const deployStarted = Date.now();
  t.log(await docker(['stack', 'deploy', '--resolve-image', 'never', ...files, STACK], { DOCKER_GID: gids[0]!, BROKER_PUBLIC_URL: publicUrl }));
  const deployMs = Date.now() - deployStarted;

  clients = managers.map((node) => new OsbClient(`http://${node.ip}:${PORT}`, 'broker', password));
  const running = await explained(waitUntil(`${REPLICAS} broker replicas ready at ${clients.map((c) => c.url).join(' and ')}`, replicasServing, 180_000, 500));
  const readyMs = Date.now() - deployStarted - deployMs;
  t.log(
    `broker image ${imageMs} ms, images on the nodes ${loadMs} ms, docker stack deploy ${deployMs} ms, ` +
      `${REPLICAS} replicas ready ${readyMs} ms later (on ${running.map((task) => task.node.name).join(', ')}); ${Date.now() - started} ms in all`,
  );
});

test.after.always(async (t) => {
  if (cluster) {
    // Normally the last test did this already; here whatever is left goes, whatever happened.
    await removeStack((line) => t.log(line)).catch((error: Error) => t.log(`removing the stack: ${error.message}`));
    await cluster.remove();
  }
  if (folder) rmSync(folder, { recursive: true, force: true });
});

/** Descriptions of a provision before its service exists; the kill comes at the next one ("Starting PostgreSQL."). */
const BEFORE_THE_SERVICE = /^(Provisioning requested|Creating|Copying|Building)/;

test.serial('a replica killed (SIGKILL) mid-provision: another one finishes it, the instance works, Swarm restarts the killed one', async (t) => {
  let attempt = 0;
  let victim: { id: string; node: SwarmClusterNode; owner: string } | undefined;
  let operation = '';
  let killedAt = 0;
  // Provisioning takes a few seconds: if it finished before the kill landed, a new instance is tried.
  while (!victim) {
    attempt++;
    if (attempt > 3) return t.fail('three provisions finished before their replica could be killed');
    const id = `stack-${randomBytes(4).toString('hex')}`;
    const accepted = await clients[0]!.provision(id, provisionBody(PG.service, PG.plan));
    t.is(accepted.status, 202, JSON.stringify(accepted.body));
    operation = accepted.body.operation as string;
    // The lease is taken before the 202, by the replica that answered.
    const owner = await waitUntil(`a lease on ${operation}`, () => leaseOwner(operation), 10_000, 100);
    const hostname = owner.split('/')[0]!;
    const container = (await brokerContainers()).find((candidate) => candidate.id.startsWith(hostname) && candidate.state === 'running');
    if (!container) return t.fail(`the lease owner ${owner} is no running broker container\n${await diagnosis()}`);
    const progressed = await waitUntil(
      `the provision of ${id} to get past creating its service`,
      async () => {
        const reply = await clients[0]!.lastOperation(id, operation);
        return reply.status !== 200 || reply.body.state !== 'in progress' || !BEFORE_THE_SERVICE.test(reply.body.description) ? reply : undefined;
      },
      60_000,
      50,
    );
    if (progressed.body.state === 'in progress') {
      await container.node.engine.getContainer(container.id).kill({ signal: 'KILL' });
      killedAt = Date.now();
      t.log(`attempt ${attempt}: killed ${container.id.slice(0, 12)} on ${container.node.name} (lease ${owner}) at "${progressed.body.description}"`);
    }
    const after = await platform((client) => client.lastOperation(id, operation));
    if (after.status === 200 && after.body.state === 'in progress') {
      instanceId = id;
      victim = { id: container.id, node: container.node, owner };
      break;
    }
    t.log(`attempt ${attempt}: the provision ended (${JSON.stringify(after.body)}) before the kill; trying another instance`);
    t.not(after.body.state, 'failed', after.body.description);
    const gone = await deprovision(id);
    t.true(gone.status === 410 || gone.body.state === 'succeeded', JSON.stringify(gone.body));
    await explained(waitUntil(`${REPLICAS} broker replicas serving again`, replicasServing, 120_000, 500));
  }
  const id = instanceId!;

  // The other replica continues it once the lease lapses (BROKER_LEASE_SECONDS, plus at most one sweep).
  const finished = await explained(
    waitUntil(
      `the provision of ${id} to finish after the kill`,
      async () => {
        const reply = await platform((client) => client.lastOperation(id, operation)).catch(() => undefined);
        return reply && (reply.status !== 200 || reply.body.state !== 'in progress') ? reply : undefined;
      },
      (leaseSeconds + sweepSeconds) * 1000 + 60_000,
      250,
    ),
  );
  const finishedMs = Date.now() - killedAt;
  t.is(finished.status, 200, JSON.stringify(finished.body));
  t.is(finished.body.state, 'succeeded', finished.body.description);

  // Who took it over, and when: the broker logs a JSON line when it continues an operation nobody holds.
  let takeover: { container: string; node: string; at: number } | undefined;
  for (const container of await brokerContainers()) {
    for (const line of (await containerLog(container.node.engine, container.id)).split('\n')) {
      if (!line.includes(operation) || !line.includes('continuing an operation nobody holds')) continue;
      const entry = JSON.parse(line.slice(line.indexOf('{'))) as { time: string };
      takeover = { container: container.id, node: container.node.name, at: Date.parse(entry.time) };
    }
  }
  if (!takeover) return t.fail(`no replica logged taking over ${operation}\n${await diagnosis()}`);
  t.not(takeover.container, victim.id, 'another process than the killed one finished the provision');
  const takeoverMs = takeover.at - killedAt;
  const restarted = (await brokerContainers()).find((container) => container.id === takeover.container)!.created >= Math.floor(killedAt / 1000);
  t.log(
    `take-over ${takeoverMs} ms after the kill by ${takeover.container.slice(0, 12)} on ${takeover.node}` +
      ` (${restarted ? 'the restarted replica' : 'the surviving replica'}); provision succeeded ${finishedMs} ms after the kill` +
      ` (lease ${leaseSeconds} s, sweep ${sweepSeconds} s)`,
  );
  t.true(takeoverMs <= (leaseSeconds + sweepSeconds + 5) * 1000, `taken over within the lease and a sweep (${takeoverMs} ms)`);

  // The instance works: a binding's credentials, at the address of the node it runs on, with the real client.
  const bound = await platform((client) => client.bind(id, 'app', { service_id: PG.service, plan_id: PG.plan, bind_resource: { app_guid: 'app' } }));
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const credentials = bound.body.credentials as { uri: string; host: string; port: number };
  t.true(
    cluster.nodes.some((node) => node.ip === credentials.host),
    `advertised at a node address (${credentials.host})`,
  );
  t.is(await pgRoundTrip(credentials.uri, 'after-the-kill'), 'after-the-kill');

  // Swarm starts the killed replica again: two replicas serving, the killed container among the finished tasks.
  const running = await explained(waitUntil(`Swarm to restart the killed replica`, replicasServing, 120_000, 500));
  const restartMs = Date.now() - killedAt;
  t.false(
    running.some((task) => task.containerId === victim.id),
    'the killed container is not one of the running replicas',
  );
  const killedTask = (await brokerTasks()).find((task) => task.containerId === victim.id);
  t.true(['failed', 'shutdown'].includes(killedTask?.state ?? ''), `the killed task is ${killedTask?.state ?? 'not in the service history'}`);
  t.log(`${REPLICAS} replicas serving again ${restartMs} ms after the kill`);
});

test.serial('deprovisioning leaves nothing of the instance on any node; the stack and its secrets are removed', async (t) => {
  if (!instanceId) return t.fail('no instance: the previous test failed');
  const id = instanceId;
  const unbound = await platform((client) => client.unbind(id, 'app', PG.service, PG.plan));
  t.is(unbound.status, 200, JSON.stringify(unbound.body));
  const started = Date.now();
  const done = await deprovision(id);
  t.true(done.status === 410 || done.body.state === 'succeeded', JSON.stringify(done.body));
  t.log(`deprovisioned in ${Date.now() - started} ms`);

  const label = `${LABEL.instance}=${id}`;
  t.deepEqual(await cluster.manager.listServices({ filters: { label: [label] } }), [], 'no service of the instance');
  for (const node of cluster.nodes) {
    t.deepEqual(await node.engine.listContainers({ all: true, filters: { label: [label] } }), [], `no container of the instance on ${node.name}`);
    t.deepEqual((await node.engine.listVolumes({ filters: { label: [label] } })).Volumes ?? [], [], `no volume of the instance on ${node.name}`);
  }

  const removeStarted = Date.now();
  await removeStack((line) => t.log(line));
  t.log(`docker stack rm and the secrets removed in ${Date.now() - removeStarted} ms`);
  t.deepEqual(
    (await cluster.manager.listSecrets()).filter((secret) => (SECRET_NAMES as readonly string[]).includes(secret.Spec?.Name ?? '')),
    [],
  );
  for (const node of cluster.nodes) t.deepEqual(await node.engine.listContainers({ all: true }), [], `nothing left running on ${node.name}`);
});
