import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import type { ListedHealth, ListedInstance } from '../src/api/listing.js';
import { PACKAGE_ROOT } from '../src/config.js';
import { DockerEngine } from '../src/docker/engine.js';
import { LABEL } from '../src/docker/types.js';
import { stateImageTag } from '../src/embedded-redis.js';
import { launchChromium } from './helpers/browser.js';
import { engine, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';

// Drift between the store and the engine, on the real engine: a killed container is started again, a removed one
// is made again from its volume with its data, a missing volume is reported (never hidden by a fresh volume), and
// the listing, fetch instance, the dashboard and `osb-docker list` all say so. Port block 21 (43100-43199).

const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const CLI = path.join(PACKAGE_ROOT, 'dist/src/cli/osb-docker.js');
const run = promisify(execFile);

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(21);
});
test.after.always(async () => {
  await env?.stop();
});

interface Ready {
  id: string;
  container: string;
  volume: string;
  dashboardUrl: string;
}

async function readyRedis(t: ExecutionContext, name: string): Promise<Ready> {
  const id = uniqueId('drift');
  const accepted = await env.client.provision(id, provisionBody(REDIS.service, REDIS.small, { context: { instance_name: name } }));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await env.client.waitForInstance(id, accepted.body.operation, 120_000);
  if (done.body.state !== 'succeeded') throw new Error(`provisioning ${name} did not succeed: ${JSON.stringify(done.body)}`);
  const [container] = await engine.listContainers({ [LABEL.instance]: id });
  const [volume] = await engine.listVolumes({ [LABEL.instance]: id });
  return { id, container: container!.name, volume: volume!.name, dashboardUrl: accepted.body.dashboard_url };
}

async function bindRedis(t: ExecutionContext, id: string): Promise<string> {
  const reply = await env.client.bind(id, uniqueId('b'), { service_id: REDIS.service, plan_id: REDIS.small, bind_resource: { app_guid: 'app-1' } });
  t.is(reply.status, 201, JSON.stringify(reply.body));
  return reply.body.credentials.uri as string;
}

/** One connection with the binding's credentials, through the published port, as an app makes it. */
async function withRedis<T>(uri: string, work: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis(uri, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => {});
  try {
    await redis.connect();
    return await work(redis);
  } finally {
    redis.disconnect();
  }
}

async function listed(id: string): Promise<ListedInstance | undefined> {
  const reply = await env.client.request('GET', '/broker/v1/instances', undefined, { version: null });
  return (reply.body.instances as ListedInstance[]).find((instance) => instance.id === id);
}

const healthOf = (id: string, state: ListedHealth['state']) =>
  waitUntil(`the listing to say ${id} is ${state}`, async () => {
    const health = (await listed(id))?.health;
    return health?.state === state ? health : undefined;
  });

/** The instance's container and volume, as the engine has them now. */
async function objectsOf(id: string) {
  const containers = await engine.listContainers({ [LABEL.instance]: id });
  const volumes = await engine.listVolumes({ [LABEL.instance]: id });
  return { containers: containers.map((container) => container.name), volumes: volumes.map((volume) => volume.name) };
}

async function cliList(): Promise<string> {
  const { stdout } = await run(process.execPath, [CLI, 'list'], {
    env: { ...process.env, OSB_BROKER_URL: env.broker.url, OSB_BROKER_USERNAME: env.config.username, OSB_BROKER_PASSWORD: env.config.password },
  });
  return stdout;
}

async function dashboardDetails(dashboardUrl: string): Promise<any> {
  const entry = await fetch(dashboardUrl, { redirect: 'manual' });
  const cookie = (entry.headers.get('set-cookie') ?? '').split(';')[0]!;
  const pagePath = new URL(dashboardUrl).pathname;
  const reply = await fetch(`${env.broker.url}${pagePath}/api/details`, { headers: { cookie } });
  if (reply.status !== 200) throw new Error(`dashboard details answered ${reply.status}`);
  return reply.json();
}

test('docker kill: the container runs again, the record says it was restarted and why, the binding still works, no operation is made', async (t) => {
  const instance = await readyRedis(t, 'killed-cache');
  const uri = await bindRedis(t, instance.id);
  await withRedis(uri, (redis) => redis.set('before', 'kill'));
  const before = (await engine.inspectContainer(instance.container))!;
  const operationBefore = (await listed(instance.id))!.last_operation;

  const killedAt = Date.now();
  await run('docker', ['kill', instance.container]);
  const again = await waitUntil('the killed container to run again', async () => {
    const container = await engine.inspectContainer(instance.container);
    return container?.running && container.startedAt !== before.startedAt ? container : undefined;
  });
  t.is(again.id, before.id, 'the same container was started again');
  t.log(`running again ${Date.now() - killedAt} ms after docker kill`);

  const health = await healthOf(instance.id, 'repaired');
  t.log(`recorded as repaired ${Date.now() - killedAt} ms after docker kill`);
  t.is(health.reason, 'container exited with code 137 (killed)');
  t.is(health.cause, 'stopped');
  t.regex(health.since, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  t.regex(health.summary, /^down since \S+Z: container exited with code 137 \(killed\); restarted by the broker at \S+Z$/);

  // The binding's user and the data came through the restart.
  t.is(await withRedis(uri, async (redis) => (await redis.set('after', 'kill')) && redis.get('before')), 'kill');

  // No OSB operation was invented, and a healthy instance carries no metadata.
  t.deepEqual((await listed(instance.id))!.last_operation, operationBefore);
  const fetched = await env.client.request('GET', `/v2/service_instances/${instance.id}`);
  t.is(fetched.status, 200);
  t.is(fetched.body.metadata, undefined);
});

test('container and volume removed behind the broker: reported down with "volume missing" everywhere, nothing made again', async (t) => {
  const instance = await readyRedis(t, 'lost-cache');
  // Quick succession, as `docker rm -f` and `docker volume rm` would do it.
  await engine.removeContainer(instance.container);
  await engine.removeVolume(instance.volume);

  const health = await healthOf(instance.id, 'down');
  t.is(health.cause, 'volume-missing');
  t.regex(health.reason!, /^data volume missing \(.+\): the instance's data is gone; deprovision and provision again, or restore the volume$/);
  t.true(health.summary.startsWith(`down since ${health.since}: data volume missing`));

  // Fetch instance: API 2.16+ gets the metadata, older versions do not know the field.
  const fetched = await env.client.request('GET', `/v2/service_instances/${instance.id}`);
  t.is(fetched.status, 200);
  t.like(fetched.body.metadata.attributes, { health: 'down', down_since: health.since });
  t.regex(fetched.body.metadata.attributes.health_reason, /volume missing/);
  const old = await env.client.request('GET', `/v2/service_instances/${instance.id}`, undefined, { version: '2.15' });
  t.is(old.status, 200);
  t.is(old.body.metadata, undefined);

  // The dashboard says it, and no longer promises a restart.
  const details = await dashboardDetails(instance.dashboardUrl);
  t.is(details.health.state, 'down');
  t.regex(details.explanation, /^Down since \S+: data volume missing .*The broker does not repair this on its own\.$/);
  t.notRegex(details.explanation, /Docker restarts it/);

  // In a browser: the status pill says what the engine has (no container: missing) and is red, as is the state in
  // the details card, with the reason.
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(fetched.body.dashboard_url);
    const pill = page.locator('#state');
    await page.locator('#state', { hasText: /^missing$/ }).waitFor();
    const stateRow = page.locator('#details dt', { hasText: /^State$/ }).locator('xpath=following-sibling::dd[1]');
    const color = (element: any) => (globalThis as any).getComputedStyle(element).color as string;
    t.is(await pill.getAttribute('class'), 'state bad');
    t.is(await stateRow.getAttribute('class'), 'bad');
    t.regex(await stateRow.innerText(), /^ready · down since \S+: data volume missing/);
    t.regex(await pill.evaluate(color), /^rgb\((179, 38, 30|255, 123, 114)\)$/, 'the red of --bad, light or dark');
    t.is(await stateRow.evaluate(color), await pill.evaluate(color));
    t.is(await page.locator('#explanation').innerText(), details.explanation);
    t.is(await page.locator('#explanation').getAttribute('class'), 'notice bad');
    t.deepEqual(errors, [], 'no script errors');
  } finally {
    await browser.close();
  }

  // osb-docker list: "down since …" in the state column, the reason under the table.
  const listing = await cliList();
  const row = listing.split('\n').find((line) => line.startsWith('lost-cache '));
  t.truthy(row, listing);
  t.is(row!.split(/\s{2,}/)[3], `down since ${health.since}`);
  t.true(listing.includes(`\nlost-cache is down since ${health.since}: data volume missing`), listing);

  // Another full pass still makes nothing: data loss stays visible.
  await env.broker.reconciler.pass();
  t.deepEqual(await objectsOf(instance.id), { containers: [], volumes: [] });
  t.like(await healthOf(instance.id, 'down'), { since: health.since, cause: 'volume-missing' });
  t.true(env.broker.reconciler.snapshot().instances.down >= 1);
});

test('container removed, volume kept: made again from the volume, with its data and bindings', async (t) => {
  const instance = await readyRedis(t, 'recreated-cache');
  const uri = await bindRedis(t, instance.id);
  await withRedis(uri, (redis) => redis.set('kept', 'through-removal'));
  // The append-only file is written within a second; then the key is on the volume for sure.
  await delay(1100);
  const before = (await engine.inspectContainer(instance.container))!;

  const removedAt = Date.now();
  await run('docker', ['rm', '-f', instance.container]);
  const health = await healthOf(instance.id, 'repaired');
  t.log(`made again and checked ${Date.now() - removedAt} ms after docker rm -f`);
  t.is(health.reason, 'container removed (the data volume is still there)');
  t.regex(health.summary, /; recreated from its data volume by the broker at \S+Z$/);

  const after = (await engine.inspectContainer(instance.container))!;
  t.true(after.running);
  t.not(after.id, before.id, 'a new container');
  t.is(after.hostPort, before.hostPort, 'on the same host port');
  t.deepEqual(await objectsOf(instance.id), { containers: [instance.container], volumes: [instance.volume] });
  t.is(await withRedis(uri, (redis) => redis.get('kept')), 'through-removal');
});

test('the engine event stream connects again when the connection drops, and replays what happened meanwhile', async (t) => {
  // The engine reached through a socket this test controls: it can cut every connection and refuse new ones.
  const dir = mkdtempSync(path.join(tmpdir(), 'osb-events-'));
  const socketPath = path.join(dir, 'docker.sock');
  const open = new Set<Socket>();
  let refusing = false;
  const proxy = createServer((client) => {
    if (refusing) return client.destroy();
    const upstream = createConnection(process.env.DOCKER_HOST?.replace(/^unix:\/\//, '') || '/var/run/docker.sock');
    for (const socket of [client, upstream]) {
      open.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        open.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => proxy.listen(socketPath, resolve));
  const label = { 'io.osb-broker.test': uniqueId('events') };
  const names = [uniqueId('osb-events'), uniqueId('osb-events')];
  const seen: string[] = [];
  const drops: string[] = [];
  const controller = new AbortController();
  const following = new DockerEngine({ socketPath }).followContainerEvents(
    label,
    ['create', 'destroy'],
    (event) => seen.push(`${event.action} ${event.attributes.name}`),
    controller.signal,
    (reason) => drops.push(reason),
  );
  try {
    await engine.createContainer({ name: names[0]!, image: stateImageTag(process.env.BROKER_IMAGE_PREFIX || 'osb-broker/'), labels: label });
    await waitUntil('the first create event', async () => seen.includes(`create ${names[0]}`), 10_000);

    // The connection drops and stays down while a container is made and removed.
    refusing = true;
    for (const socket of open) socket.destroy();
    await waitUntil('the follower to notice', async () => drops.length > 0, 10_000);
    await engine.createContainer({ name: names[1]!, image: stateImageTag(process.env.BROKER_IMAGE_PREFIX || 'osb-broker/'), labels: label });
    await engine.removeContainer(names[1]!);
    refusing = false;

    await waitUntil('the events of the gap, replayed', async () => seen.includes(`create ${names[1]}`) && seen.includes(`destroy ${names[1]}`), 15_000);
    await engine.removeContainer(names[0]!);
    await waitUntil('a new event on the new connection', async () => seen.includes(`destroy ${names[0]}`), 10_000);
    t.true(drops.length >= 1);
    t.is(seen.filter((entry) => entry === `create ${names[1]}`).length, 1, 'the gap is replayed once');
  } finally {
    controller.abort();
    await following;
    for (const name of names) await engine.removeContainer(name);
    proxy.close();
    for (const socket of open) socket.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
});
