/**
 * Kill points: two broker replicas on one Redis; one of them is killed (SIGKILL) at a random moment of a provision,
 * bind, unbind or deprovision it started, then started again. Counts what survived: every operation must end
 * (taken over by the other replica), every instance must work, and nothing may be left at the end.
 * Usage: KILL_N=30 npm run kill-points   (loopback only; removes everything it made)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { PACKAGE_ROOT } from '../src/config.js';
import { DockerEngine } from '../src/docker/engine.js';
import { LABEL } from '../src/docker/types.js';
import { stateImageTag } from '../src/embedded-redis.js';
import { median, table } from './stats.js';

const N = Number(process.env.KILL_N || 20);
const PG = { service: 'd0fc228f-54d1-4bed-8dd0-38c7a33c4500', plan: 'fdc3b78d-156f-4bac-aba4-242250cc5840' };
const engine = new DockerEngine();
const brokerId = `k${randomBytes(4).toString('hex')}`;
const auth = `Basic ${Buffer.from('broker:kill-points').toString('base64')}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

interface Replica {
  url: string;
  child: ChildProcess;
}

async function startReplica(env: Record<string, string>): Promise<Replica> {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'dist/src/main.js')], {
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: 'ignore',
  });
  const url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; attempt < 300; attempt++) {
    if (
      await fetch(`${url}/healthz`).then(
        (reply) => reply.ok,
        () => false,
      )
    )
      return { url, child };
    await sleep(50);
  }
  throw new Error('a replica did not start');
}

async function call(replica: Replica, method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: Record<string, any> }> {
  const reply = await fetch(`${replica.url}${urlPath}`, {
    method,
    headers: { Authorization: auth, 'X-Broker-API-Version': '2.17', ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await reply.text();
  return { status: reply.status, body: text ? (JSON.parse(text) as Record<string, any>) : {} };
}

/** Polls last_operation on `replica` until the operation ends; the time it took. */
async function waitEnd(replica: Replica, pollPath: string): Promise<{ state: string; ms: number }> {
  const started = Date.now();
  for (;;) {
    const reply = await call(replica, 'GET', pollPath).catch(() => undefined);
    if (reply?.status === 410 || reply?.status === 404) return { state: 'gone', ms: Date.now() - started };
    if (reply?.status === 200 && reply.body.state !== 'in progress') return { state: reply.body.state as string, ms: Date.now() - started };
    if (Date.now() - started > 120_000) return { state: 'stuck', ms: Date.now() - started };
    await sleep(100);
  }
}

async function main(): Promise<void> {
  const redisName = `osb-kill-points-redis-${brokerId}`;
  await engine.createContainer({
    name: redisName,
    image: stateImageTag('osb-broker/'),
    labels: { [LABEL.role]: 'test-redis' },
    publish: [{ containerPort: 6379, hostIp: '127.0.0.1', hostPort: 0 }],
  });
  await engine.startContainer(redisName);
  const redisPort = (await engine.inspectContainer(redisName))!.hostPort!;
  const env = {
    BROKER_ID: brokerId,
    BROKER_PASSWORD: 'kill-points',
    BROKER_ENCRYPTION_KEY: randomBytes(32).toString('hex'),
    REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    BROKER_PORT_RANGE: '44000-44099',
    BROKER_LEASE_SECONDS: process.env.KILL_LEASE_SECONDS || '3',
    BROKER_SWEEP_SECONDS: '1',
    BROKER_STATE_DIR: `/tmp/${brokerId}`,
    LOG_LEVEL: 'warn',
  };
  await sleep(500);
  let a = await startReplica(env);
  const b = await startReplica(env);
  const rows = new Map<string, { kills: number; ended: number; succeeded: number; takeover: number[] }>();
  const live: string[] = [];
  const bound = new Map<string, string[]>();
  try {
    for (let round = 0; round < N; round++) {
      // Enough instances to bind and delete; otherwise provision.
      const kinds = live.length < 2 ? ['provision'] : ['provision', 'bind', 'unbind', 'deprovision'];
      let kind = kinds[Math.floor(Math.random() * kinds.length)]!;
      const withBindings = live.filter((id) => bound.get(id)?.length);
      if (kind === 'unbind' && withBindings.length === 0) kind = 'bind';
      const pool = kind === 'unbind' ? withBindings : live;
      const instance = kind === 'provision' ? `i-${randomBytes(4).toString('hex')}` : pool[Math.floor(Math.random() * pool.length)]!;
      let binding = '';
      let started: { status: number; body: Record<string, any> };
      let pollPath = `/v2/service_instances/${instance}/last_operation`;
      if (kind === 'provision') {
        started = await call(a, 'PUT', `/v2/service_instances/${instance}?accepts_incomplete=true`, {
          service_id: PG.service,
          plan_id: PG.plan,
          organization_guid: 'o',
          space_guid: 's',
        });
      } else if (kind === 'deprovision') {
        started = await call(a, 'DELETE', `/v2/service_instances/${instance}?accepts_incomplete=true&service_id=${PG.service}&plan_id=${PG.plan}`);
      } else {
        const list = bound.get(instance) ?? [];
        binding = kind === 'bind' ? `b-${randomBytes(4).toString('hex')}` : list[0]!;
        const bindingPath = `/v2/service_instances/${instance}/service_bindings/${binding}`;
        pollPath = `${bindingPath}/last_operation`;
        started =
          kind === 'bind'
            ? await call(a, 'PUT', `${bindingPath}?accepts_incomplete=true`, { service_id: PG.service, plan_id: PG.plan })
            : await call(a, 'DELETE', `${bindingPath}?accepts_incomplete=true&service_id=${PG.service}&plan_id=${PG.plan}`);
      }
      if (started.status !== 202)
        throw new Error(`${kind} of ${instance}${binding ? `/${binding}` : ''} answered ${started.status}: ${JSON.stringify(started.body)}`);
      pollPath += `?operation=${encodeURIComponent(started.body.operation as string)}`;
      await sleep(Math.random() * (kind === 'provision' ? 2500 : 300));
      a.child.kill('SIGKILL');
      const killed = Date.now();
      const end = await waitEnd(b, pollPath);
      const row = rows.get(kind) ?? { kills: 0, ended: 0, succeeded: 0, takeover: [] };
      row.kills++;
      if (end.state !== 'stuck') row.ended++;
      if (end.state === 'succeeded') row.succeeded++;
      row.takeover.push(Date.now() - killed);
      console.error(`round ${round + 1}: ${kind} ${instance}${binding ? `/${binding}` : ''} killed, then ${end.state} after ${Date.now() - killed} ms`);
      rows.set(kind, row);
      if (kind === 'provision' && end.state === 'succeeded') live.push(instance);
      if (kind === 'deprovision' && end.state === 'succeeded') {
        live.splice(live.indexOf(instance), 1);
        bound.delete(instance);
      }
      if (kind === 'bind' && end.state === 'succeeded') bound.set(instance, [...(bound.get(instance) ?? []), binding]);
      if (kind === 'unbind' && end.state !== 'stuck')
        bound.set(
          instance,
          (bound.get(instance) ?? []).filter((id) => id !== binding),
        );
      a = await startReplica(env);
    }
    // Every live instance works through a fresh binding, then everything is removed.
    let working = 0;
    for (const instance of live) {
      const bindingPath = `/v2/service_instances/${instance}/service_bindings/check`;
      const reply = await call(b, 'PUT', bindingPath, { service_id: PG.service, plan_id: PG.plan });
      const client = new pg.Client({ connectionString: reply.body.credentials?.uri as string });
      try {
        await client.connect();
        await client.query('SELECT 1');
        working++;
      } finally {
        await client.end().catch(() => undefined);
      }
      await call(b, 'DELETE', `/v2/service_instances/${instance}?accepts_incomplete=true&service_id=${PG.service}&plan_id=${PG.plan}`);
      await waitEnd(b, `/v2/service_instances/${instance}/last_operation`);
    }
    const left = await engine.listContainers({ [LABEL.broker]: brokerId });
    console.log(
      table(
        ['operation killed', 'kills', 'ended', 'succeeded', 'median ms from kill to end'],
        [...rows].map(([kind, row]) => [kind, String(row.kills), String(row.ended), String(row.succeeded), String(Math.round(median(row.takeover)))]),
      ),
    );
    console.log(`\n${working}/${live.length} surviving instances accept a login; ${left.length} containers left after deleting them all`);
  } finally {
    a.child.kill('SIGKILL');
    b.child.kill('SIGKILL');
    for (const container of await engine.listContainers({ [LABEL.broker]: brokerId })) await engine.removeContainer(container.name);
    for (const volume of await engine.listVolumes({ [LABEL.broker]: brokerId })) await engine.removeVolume(volume.name);
    await engine.removeContainer(redisName);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
