import test from 'ava';
import Docker from 'dockerode';
import { Redis } from 'ioredis';
import type { Readable } from 'node:stream';
import { startSwarmCluster, type SwarmCluster } from '../helpers/swarm-cluster.js';
import { waitUntil } from '../helpers/wait.js';

// The test cluster itself: three Docker-in-Docker engines form a Swarm; a service pinned to a worker answers on that
// worker's address; the worker's engine goes down and comes back with its Swarm membership, labels and images.
const NAME = 'cluster-test';
const IMAGE = 'osb-broker/redis:7.0.2';
const PORT = 16379;
const MEMORY = 256 * 1024 * 1024;

let cluster: SwarmCluster | undefined;

test.before(async (t) => {
  cluster = await startSwarmCluster({ name: NAME, nodes: 3, log: (line) => t.log(line) });
  const { reused, builtImage, ms } = cluster.startup;
  t.log(
    `cluster ${reused ? 'reused' : 'started'}${builtImage ? ' (node image built)' : ''}: image ${ms.image} ms, nodes ${ms.nodes} ms, swarm ${ms.swarm} ms, total ${ms.total} ms`,
  );
});

test.after.always(async () => {
  await cluster?.remove();
});

/**
 * Redis answers on ip:port: without credentials it refuses the client with NOAUTH (the default user is off). ioredis
 * reports that refusal of its HELLO as an error event, then rejects with "Connection is closed".
 */
async function redisAnswers(host: string, port: number): Promise<boolean> {
  const redis = new Redis({ host, port, lazyConnect: true, connectTimeout: 1_000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  const errors: string[] = [];
  redis.on('error', (error: Error) => errors.push(error.message));
  try {
    await redis.connect();
    await redis.ping();
    return true;
  } catch (error) {
    return [...errors, (error as Error).message].some((message) => message.includes('NOAUTH'));
  } finally {
    redis.disconnect();
  }
}

async function execOutput(engine: Docker, container: string, cmd: string[], user?: string): Promise<{ code: number; output: string }> {
  const exec = await engine.getContainer(container).exec({ Cmd: cmd, User: user, AttachStdout: true, AttachStderr: true });
  const stream = (await exec.start({})) as Readable;
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  await new Promise((resolve, reject) => stream.once('end', resolve).once('error', reject));
  // Multiplexed stream: 8-byte frame headers before each piece of output.
  const raw = Buffer.concat(chunks);
  let output = '';
  for (let at = 0; at + 8 <= raw.length;) {
    const size = raw.readUInt32BE(at + 4);
    output += raw.subarray(at + 8, at + 8 + size).toString();
    at += 8 + size;
  }
  return { code: (await exec.inspect()).ExitCode ?? -1, output };
}

test.serial('a service pinned to a worker answers on its address; the worker goes down and comes back ready', async (t) => {
  t.timeout(240_000);
  const swarm = cluster!;
  const worker = swarm.nodes[1]!;
  t.is(swarm.nodes[0]!.role, 'manager');
  t.is(swarm.managerUrl, `tcp://${swarm.nodes[0]!.ip}:2375`);
  for (const node of swarm.nodes) {
    t.is(((await node.engine.info()) as { Driver: string }).Driver, 'overlay2', node.name);
    const status = await swarm.nodeStatus(node.name);
    t.is(status.state, 'ready', node.name);
    t.deepEqual([status.labels['io.osb-broker.engine'], status.labels['io.osb-broker.advertise-host']], [`tcp://${node.ip}:2375`, node.ip], node.name);
  }

  const [load] = await swarm.loadImage(IMAGE, [worker.name]);
  t.log(`${IMAGE} into ${worker.name}: ${load!.skipped ? 'already there' : `${Math.round(load!.bytes / 1e6)} MB in ${load!.ms} ms`}`);
  t.deepEqual((await swarm.loadImage(IMAGE, [worker.name]))[0]!.skipped, true, 'a second load is skipped');

  let since = Date.now();
  await swarm.manager.createService({
    Name: 'cluster-test-redis',
    TaskTemplate: {
      ContainerSpec: { Image: IMAGE },
      Resources: { Limits: { MemoryBytes: MEMORY } },
      Placement: { Constraints: [`node.id==${worker.swarmNodeId}`] },
      RestartPolicy: { Condition: 'any', Delay: 1e9 },
    },
    Mode: { Replicated: { Replicas: 1 } },
    EndpointSpec: { Ports: [{ Protocol: 'tcp', TargetPort: 6379, PublishedPort: PORT, PublishMode: 'host' }] },
  });
  await waitUntil(`redis on ${worker.ip}:${PORT}`, () => redisAnswers(worker.ip, PORT), 60_000, 200);
  t.log(`service answering on ${worker.ip}:${PORT} ${Date.now() - since} ms after its creation`);

  // The task runs on the worker, with its memory limit applied through the node's cgroups.
  const [task] = await worker.engine.listContainers({ filters: { label: ['com.docker.swarm.service.name=cluster-test-redis'] } });
  t.truthy(task, 'the task container is on the worker');
  const limit = await execOutput(worker.engine, task!.Id, [
    'sh',
    '-c',
    'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes',
  ]);
  t.is(limit.output.trim(), String(MEMORY));
  await waitUntil('/osb/ready in the task', async () => (await execOutput(worker.engine, task!.Id, ['/osb/ready'], 'redis')).code === 0, 30_000, 200);

  await swarm.stopNodeEngine(worker.name);
  const downMs = await swarm.waitForNodeState(worker.name, 'down', 90_000);
  t.log(`${worker.name} down ${downMs} ms after its engine was killed`);
  t.false(await redisAnswers(worker.ip, PORT), 'nothing answers on a stopped node');

  const upMs = await swarm.startNodeEngine(worker.name);
  t.log(`${worker.name} ready ${upMs} ms after its start`);
  const back = await swarm.nodeStatus(worker.name);
  t.is(back.labels['io.osb-broker.engine'], worker.engineUrl, 'labels kept');
  t.true((await swarm.loadImage(IMAGE, [worker.name]))[0]!.skipped, 'images kept');
  since = Date.now();
  await waitUntil(`redis on ${worker.ip}:${PORT} again`, () => redisAnswers(worker.ip, PORT), 60_000, 200);
  t.log(`service answering again ${Date.now() - since} ms after the node was ready`);

  since = Date.now();
  await swarm.removeServices();
  t.log(`service removed in ${Date.now() - since} ms`);
});

test.serial('a second start reuses the running cluster; a broken one is recreated and keeps its loaded images', async (t) => {
  t.timeout(120_000);
  const first = cluster!;
  const again = await startSwarmCluster({ name: NAME, nodes: 3 });
  t.true(again.startup.reused);
  t.deepEqual(
    again.nodes.map((node) => node.swarmNodeId),
    first.nodes.map((node) => node.swarmNodeId),
  );
  t.log(`reused in ${again.startup.ms.total} ms`);

  // A node container removed behind the helper's back: the cluster is rebuilt on the same volumes.
  await new Docker().getContainer(first.nodes[2]!.name).remove({ force: true });
  cluster = await startSwarmCluster({ name: NAME, nodes: 3 });
  const { reused, ms } = cluster.startup;
  t.false(reused);
  t.log(`recreated in ${ms.total} ms (nodes ${ms.nodes} ms, swarm ${ms.swarm} ms)`);
  t.not(cluster.nodes[0]!.swarmNodeId, first.nodes[0]!.swarmNodeId, 'a new Swarm');
  for (const node of cluster.nodes) t.is((await cluster.nodeStatus(node.name)).state, 'ready');
  t.true((await cluster.loadImage(IMAGE, [cluster.nodes[1]!.name]))[0]!.skipped, 'the worker kept the image in its volume');
  t.deepEqual(await cluster.manager.listServices(), []);
});
