/**
 * Swarm scale-out: BENCH_SWARM_N (default 50) Redis instances provisioned at once through the broker in Swarm mode,
 * on a Swarm of 1 node and of 3 nodes (Docker-in-Docker nodes on this machine, test/helpers/swarm-cluster.ts), next
 * to the same number of bare Swarm services of the same image created directly through the manager's API in the
 * same run. Prints total time, failures, per-instance p50/p95 and the broker's peak resident memory.
 * Usage: npm run bench:swarm   (BENCH_SWARM_N=50, BENCH_SWARM_NODES=1,3)
 */
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type Docker from 'dockerode';
import { loadCatalog } from '../src/catalog/load.js';
import { imageTag } from '../src/catalog/definition.js';
import { PACKAGE_ROOT } from '../src/config.js';
import { waitFor } from '../src/wait.js';
import { startTestRedis } from '../test/helpers/env.js';
import { provisionBody } from '../test/helpers/osb-client.js';
import { freePort, hexKey, spawnBroker, tempStateDir, type SpawnedBroker } from '../test/helpers/spawn-broker.js';
import { startSwarmCluster, type SwarmCluster } from '../test/helpers/swarm-cluster.js';
import { median, ms, p95, table } from './stats.js';

const N = Number(process.env.BENCH_SWARM_N || 50);
const NODE_COUNTS = (process.env.BENCH_SWARM_NODES || '1,3').split(',').map(Number);
const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', plan: '92776b7b-46d1-4950-91fb-9b675ca53968' };

interface Run {
  nodes: number;
  what: string;
  totalMs: number;
  failures: number;
  perInstance: number[];
  brokerPeakMb?: number;
  deprovisionMs?: number;
}

async function brokerRunMs(broker: SpawnedBroker, count: number): Promise<Omit<Run, 'nodes' | 'what'>> {
  let peak = 0;
  const sampler = setInterval(() => {
    broker.client
      .request('GET', '/metrics', undefined, { version: null })
      .then((reply) => {
        const rss = Number(/^process_resident_memory_bytes (\d+)/m.exec(String(reply.body))?.[1] ?? 0);
        peak = Math.max(peak, rss);
      })
      .catch(() => {});
  }, 250);
  const started = Date.now();
  const ids = Array.from({ length: count }, () => `bench-${randomBytes(5).toString('hex')}`);
  const outcomes = await Promise.all(
    ids.map(async (id) => {
      const begun = Date.now();
      const accepted = await broker.client.provision(id, provisionBody(REDIS.service, REDIS.plan));
      if (accepted.status !== 202) return { ok: false, ms: Date.now() - begun, why: `${accepted.status} ${JSON.stringify(accepted.body)}` };
      const done = await broker.client.waitForInstance(id, accepted.body.operation, 900_000);
      return { ok: done.body.state === 'succeeded', ms: Date.now() - begun, why: done.body.description as string };
    }),
  );
  const totalMs = Date.now() - started;
  const failed = outcomes.filter((outcome) => !outcome.ok);
  for (const outcome of failed.slice(0, 3)) process.stderr.write(`  failure: ${outcome.why}\n`);
  const removing = Date.now();
  await Promise.all(
    ids.map(async (id) => {
      const reply = await broker.client.deprovision(id, REDIS.service, REDIS.plan);
      if (reply.status === 202) await broker.client.waitForInstance(id, reply.body.operation, 900_000);
    }),
  );
  const deprovisionMs = Date.now() - removing;
  clearInterval(sampler);
  return {
    totalMs,
    failures: failed.length,
    perInstance: outcomes.filter((outcome) => outcome.ok).map((outcome) => outcome.ms),
    brokerPeakMb: peak / 1024 / 1024,
    deprovisionMs,
  };
}

/** The same number of one-task services of the same image, straight through the manager: running, not checked for a login. */
async function rawRunMs(cluster: SwarmCluster, image: string, count: number): Promise<Omit<Run, 'nodes' | 'what'>> {
  const manager: Docker = cluster.manager;
  const names = Array.from({ length: count }, (_, index) => `bench-raw-${index}-${randomBytes(3).toString('hex')}`);
  const started = Date.now();
  const times = await Promise.all(
    names.map(async (name, index) => {
      const begun = Date.now();
      const node = cluster.nodes[index % cluster.nodes.length]!;
      await manager.createService({
        Name: name,
        Labels: { 'io.osb-broker.bench': 'raw' },
        TaskTemplate: {
          ContainerSpec: { Image: image },
          Resources: { Limits: { MemoryBytes: 256 * 1024 * 1024 }, Reservations: { MemoryBytes: 256 * 1024 * 1024 } },
          Placement: { Constraints: [`node.id==${node.swarmNodeId}`] },
        },
        Mode: { Replicated: { Replicas: 1 } },
        EndpointSpec: { Ports: [{ Protocol: 'tcp', TargetPort: 6379, PublishedPort: 46000 + index, PublishMode: 'host' }] },
      } as Docker.CreateServiceOptions);
      await waitFor(
        async () => {
          const tasks = (await manager.listTasks({ filters: { service: [name] } })) as Array<{ Status: { State: string } }>;
          return tasks.some((task) => task.Status.State === 'running') ? true : undefined;
        },
        { intervalMs: 250, timeoutMs: 600_000 },
      );
      return Date.now() - begun;
    }),
  );
  const totalMs = Date.now() - started;
  const removing = Date.now();
  for (const name of names) await manager.getService(name).remove();
  return { totalMs, failures: 0, perInstance: times, deprovisionMs: Date.now() - removing };
}

async function benchNodes(nodes: number, image: string): Promise<Run[]> {
  process.stderr.write(`Swarm of ${nodes} node(s): starting ...\n`);
  const cluster = await startSwarmCluster({ name: `osb-bench-${nodes}`, nodes, log: (line) => process.stderr.write(`  ${line}\n`) });
  const redis = await startTestRedis();
  const state = tempStateDir();
  let broker: SpawnedBroker | undefined;
  try {
    await cluster.loadImage(image, [cluster.nodes[0]!.name]);
    broker = await spawnBroker({
      PORT: String(await freePort()),
      DOCKER_HOST: cluster.managerUrl,
      BROKER_ORCHESTRATOR: 'swarm',
      BROKER_ID: `bench${nodes}`,
      REDIS_URL: redis.url,
      BROKER_PASSWORD: 'bench',
      BROKER_ENCRYPTION_KEY: hexKey(),
      BROKER_STATE_DIR: state.dir,
      BROKER_PORT_RANGE: '49100-49399',
      LOG_LEVEL: 'warn',
    });
    // Untimed: the image reaches every node once (the broker copies it on first use), so both sides start warm.
    process.stderr.write(`  warm-up: one instance per node ...\n`);
    await brokerRunMs(broker, nodes);
    process.stderr.write(`  ${N} bare services ...\n`);
    const raw = await rawRunMs(cluster, image, N);
    process.stderr.write(`  ${N} instances through the broker ...\n`);
    const viaBroker = await brokerRunMs(broker, N);
    return [
      { nodes, what: 'bare services (running)', ...raw },
      { nodes, what: 'broker (ready, login checked)', ...viaBroker },
    ];
  } finally {
    await broker?.kill('SIGTERM');
    await cluster.remove();
    await redis.stop();
    state.remove();
  }
}

async function main(): Promise<void> {
  const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), process.env.BROKER_IMAGE_PREFIX || 'osb-broker/');
  const image = imageTag(definitions.find((definition) => definition.offering.name === 'redis')!);
  const runs: Run[] = [];
  for (const nodes of NODE_COUNTS) runs.push(...(await benchNodes(nodes, image)));
  const cpus = os.cpus();
  console.log(`\nSwarm scale-out: ${N} Redis instances at once; ${cpus.length} cpus, node ${process.version}; nodes are Docker-in-Docker on this machine\n`);
  console.log(
    table(
      ['Swarm nodes, what', 'total', 'failures', 'p50 each', 'p95 each', 'vs bare', 'broker peak RSS', 'removal'],
      runs.map((run) => {
        const bare = runs.find((candidate) => candidate.nodes === run.nodes && candidate.what.startsWith('bare'))!;
        return [
          `${run.nodes} node${run.nodes === 1 ? '' : 's'}, ${run.what}`,
          ms(run.totalMs),
          String(run.failures),
          run.perInstance.length ? ms(median(run.perInstance)) : '-',
          run.perInstance.length ? ms(p95(run.perInstance)) : '-',
          `${(run.totalMs / bare.totalMs).toFixed(2)}x`,
          run.brokerPeakMb ? `${run.brokerPeakMb.toFixed(0)} MiB` : '-',
          run.deprovisionMs !== undefined ? ms(run.deprovisionMs) : '-',
        ];
      }),
    ),
  );
}

await main();
