// Engine health against the real engines (port block 59): each offering's stats script reports numbers that match a
// known situation made with the real client libraries (pg, mysql2, ioredis, amqplib, mqtt.js); /metrics carries the
// collected ones; the dashboard's Engine card shows them in Chromium with RabbitMQ's management links; a stopped
// container gives a reason on the card and "up 0" without numbers in /metrics.
import test from 'ava';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import memjs from 'memjs';
import mqtt from 'mqtt';
import { createConnection } from 'node:net';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { type Browser } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../src/config.js';
import { LABEL } from '../src/docker/types.js';
import { launchChromium } from './helpers/browser.js';
import { engine, PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { freePort, killAllBrokers, spawnBroker, tempStateDir } from './helpers/spawn-broker.js';
import { waitUntil } from './helpers/wait.js';

const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const RABBIT = { service: '6b592c13-3465-4be4-a448-7c14258b034c', small: 'bf8e1ee2-edda-44a2-ab3d-ba531124d51b' };
const MQTT = { service: '6d6a455a-02d9-43ec-884b-bb6c5e827a77', small: '68f7c072-2a32-4b72-b3f3-bc56f5f9c620' };
const MEMCACHED = { service: '97fa3eaf-8e67-4001-af44-0f4f8921ff48', small: '21fe54ca-7324-41da-a2a5-1050ef67e0dc' };
const SYSLOG = { service: '84967dcb-ebf0-4cfd-8ab6-8f728fe8b4fc', small: '9ce9e8c8-8d12-4dce-83fa-776abec6d023' };
const MARIADB = { service: '0f5e3bfd-1d78-49ad-9f16-78ce4c376b52', small: 'c65006c3-2c84-4a77-93b1-c14c76cd9075' };

type Creds = Record<string, any>;
interface Card {
  supported: boolean;
  at?: string;
  reason?: string;
  stats: Array<{ name: string; value: number | null; of?: string }>;
  links: Array<{ label: string; url: string; note?: string }>;
}
interface Instance {
  id: string;
  dashboardUrl: string;
  creds: Creds;
  /** The bind answer (the syslog drain's URL is beside the credentials). */
  bound: Record<string, any>;
  cookie?: string;
  apiBase?: string;
}

/** Where the Engine card's screenshot goes. */
const OUTPUT = path.join(PACKAGE_ROOT, 'test-output');
let env: TestBroker;
let browser: Browser;
const instances: Record<'pg' | 'redis' | 'rabbit' | 'mqtt' | 'mariadb' | 'memcached' | 'syslog', Instance> = {} as never;

async function provisionAndBind(service: { service: string; small: string }, parameters: Record<string, unknown> = {}): Promise<Instance> {
  const id = uniqueId('stats');
  const accepted = await env.client.provision(id, provisionBody(service.service, service.small, { parameters }));
  if (accepted.status !== 202) throw new Error(`provision answered ${accepted.status}: ${JSON.stringify(accepted.body)}`);
  const done = await env.client.waitForInstance(id, accepted.body.operation);
  if (done.body.state !== 'succeeded') throw new Error(`provision ${done.body.state}: ${done.body.description}`);
  const bound = await env.client.bind(id, uniqueId('b'), { service_id: service.service, plan_id: service.small, bind_resource: { app_guid: 'app-1' } });
  if (bound.status !== 201) throw new Error(`bind answered ${bound.status}: ${JSON.stringify(bound.body)}`);
  return { id, dashboardUrl: accepted.body.dashboard_url, creds: bound.body.credentials, bound: bound.body };
}

test.before(async () => {
  // Collection every 3 s so /metrics follows quickly; no reconciler, so a stopped container stays stopped.
  env = await startTestBroker(59, { engineStatsSeconds: 3, reconcileSeconds: 0 });
  const started = Date.now();
  const [pgInstance, redis, rabbit, mqttInstance, mariadb, memcached, syslog] = await Promise.all([
    provisionAndBind(PG),
    provisionAndBind(REDIS),
    provisionAndBind(RABBIT),
    provisionAndBind(MQTT),
    provisionAndBind(MARIADB),
    provisionAndBind(MEMCACHED),
    provisionAndBind(SYSLOG, { max_file_mb: 2 }),
  ]);
  Object.assign(instances, { pg: pgInstance, redis, rabbit, mqtt: mqttInstance, mariadb, memcached, syslog });
  console.log(`seven instances provisioned and bound in ${Date.now() - started} ms`);
});
test.after.always(async () => {
  await killAllBrokers();
  await browser?.close();
  await env?.stop();
});

/** The Engine card's JSON, through a dashboard session (the link's token exchanged for the cookie once). */
/** Wall time of each card read the broker had to run the script for (no shared reading), for the log. */
const uncached: number[] = [];

async function card(instance: Instance): Promise<Card> {
  if (!instance.cookie) {
    const response = await fetch(instance.dashboardUrl, { redirect: 'manual' });
    instance.cookie = (response.headers.get('set-cookie') ?? '').split(';')[0]!;
    instance.apiBase = new URL(response.headers.get('location')!, instance.dashboardUrl).href.replace(/\/+$/, '');
  }
  const asked = Date.now();
  const response = await fetch(`${instance.apiBase}/api/engine`, { headers: { cookie: instance.cookie } });
  if (response.status !== 200) throw new Error(`api/engine answered ${response.status}`);
  const reading = (await response.json()) as Card;
  if (reading.at && Date.parse(reading.at) >= asked - 50) uncached.push(Date.now() - asked);
  return reading;
}

const value = (reading: Card, name: string) => reading.stats.find((stat) => stat.name === name)?.value;

/** Waits until the card's numbers satisfy `ok` (a reading is shared for 5 s, the engines refresh theirs on their own). */
async function cardUntil(instance: Instance, what: string, ok: (reading: Card) => boolean, timeoutMs = 30_000): Promise<Card> {
  let last: Card | undefined;
  try {
    return await waitUntil(
      what,
      async () => {
        last = await card(instance);
        return ok(last) ? last : undefined;
      },
      timeoutMs,
      1000,
    );
  } catch (error) {
    throw new Error(`${(error as Error).message}; last reading ${JSON.stringify(last)}`, { cause: error });
  }
}

async function metricsText(): Promise<string> {
  return (await env.client.request('GET', '/metrics', undefined, { version: null })).body as string;
}

test.serial('PostgreSQL: three more connections, the database size and a running statement', async (t) => {
  const instance = instances.pg;
  const before = await card(instance);
  t.true(before.supported);
  t.is(before.reason, undefined);
  const base = value(before, 'connections')!;
  t.true(value(before, 'max_connections')! > 0);
  t.true(value(before, 'database_size_bytes')! > 1_000_000, 'an empty PostgreSQL database is a few MB');
  const clients = Array.from({ length: 3 }, () => new pg.Client({ connectionString: instance.creds.uri }));
  await Promise.all(clients.map((client) => client.connect()));
  try {
    // Long enough to outlast a shared reading (5 s); ending the client below cuts the wait for it.
    clients[0]!.query('SELECT pg_sleep(8)').catch(() => {});
    const reading = await cardUntil(
      instance,
      'three more connections and a running statement',
      (r) => value(r, 'connections')! >= base + 3 && value(r, 'longest_query_seconds')! >= 0.5,
    );
    t.log(JSON.stringify(reading.stats));
  } finally {
    await Promise.all(clients.map((client) => client.end()));
  }
});

test.serial('MariaDB: three more connections and the database size', async (t) => {
  const instance = instances.mariadb;
  const base = value(await card(instance), 'connections')!;
  const uri = instance.creds.uri as string;
  const connections = await Promise.all(Array.from({ length: 3 }, () => mysql.createConnection(uri)));
  try {
    await connections[0]!.query('CREATE TABLE filler (id INT PRIMARY KEY, text VARCHAR(200))');
    const reading = await cardUntil(instance, 'three more connections', (r) => value(r, 'connections')! >= base + 3);
    t.true(value(reading, 'max_connections')! >= value(reading, 'connections')!);
    t.true(value(reading, 'database_size_bytes')! > 0, 'the new table takes room');
  } finally {
    await Promise.all(connections.map((connection) => connection.end()));
  }
});

test.serial('Redis: 10 keys, memory against maxmemory, hit ratio; /metrics carries the collected numbers', async (t) => {
  const instance = instances.redis;
  const redis = new Redis(instance.creds.uri as string, { maxRetriesPerRequest: 1 });
  try {
    for (let key = 0; key < 10; key++) await redis.set(`key-${key}`, 'x'.repeat(100));
    for (const key of ['key-1', 'key-2', 'key-3', 'missing']) await redis.get(key);
    const reading = await cardUntil(instance, '10 keys', (r) => value(r, 'keys') === 10);
    t.true(value(reading, 'used_memory_bytes')! > 0);
    t.true(value(reading, 'maxmemory_bytes')! > value(reading, 'used_memory_bytes')!, 'maxmemory is sized from the plan');
    const ratio = value(reading, 'hit_ratio')!;
    t.true(ratio > 0 && ratio < 1, `3 hits and a miss at least: ${ratio}`);
  } finally {
    redis.disconnect();
  }
  const labels = `instance_id="${instance.id}",offering="redis",plan="small"`;
  const text = await waitUntil('keys 10 in /metrics', async () => {
    const scraped = await metricsText();
    return scraped.includes(`osb_instance_engine_stat{${labels},stat="keys"} 10`) ? scraped : undefined;
  });
  t.true(text.includes(`osb_instance_engine_stats_up{${labels}} 1`));
  t.regex(text, new RegExp(`osb_instance_engine_stat\\{${labels},stat="used_memory_bytes"\\} \\d+`));
});

test.serial('RabbitMQ: a queue with 5 ready messages, 2 unacknowledged; the card in Chromium links the management UI', async (t) => {
  const instance = instances.rabbit;
  const connection = await amqp.connect(instance.creds.uri as string);
  try {
    const channel = await connection.createChannel();
    await channel.assertQueue('orders');
    for (let message = 0; message < 7; message++) channel.sendToQueue('orders', Buffer.from(`order ${message}`));
    await channel.prefetch(2);
    await channel.consume('orders', () => {}, { noAck: false });
    const reading = await cardUntil(
      instance,
      '5 ready, 2 unacknowledged',
      (r) => value(r, 'messages_ready') === 5 && value(r, 'messages_unacknowledged') === 2,
    );
    t.is(value(reading, 'queues'), 1);
    t.true(value(reading, 'connections')! >= 1);
    const management = instance.creds.http_api_uri as string;
    const port = new URL(management).port;
    t.deepEqual(
      reading.links.map((link) => link.url),
      [`http://127.0.0.1:${port}/`, `https://127.0.0.1:${new URL(instance.creds.https_api_uri as string).port}/`],
    );
    for (const link of reading.links) t.false(link.url.includes('@') || link.url.includes(instance.creds.password as string), 'no credentials in a link');

    browser = await launchChromium();
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(instance.dashboardUrl);
    const ready = page.locator('#engine-stats .meter[data-stat="messages_ready"] .meter-value');
    await page.locator('#engine-stats .meter[data-stat="messages_ready"] .meter-value', { hasText: /^5$/ }).waitFor();
    t.is(await ready.textContent(), '5');
    t.is(await page.locator('#engine-links a').first().getAttribute('href'), `http://127.0.0.1:${port}/`);
    t.regex(await page.locator('#engine-links').innerText(), /Log in with a binding's username and password/);
    t.false((await page.content()).includes(instance.creds.password as string));
    t.deepEqual(errors, []);
    mkdirSync(OUTPUT, { recursive: true });
    await page.locator('#engine').screenshot({ path: path.join(OUTPUT, 'dashboard-engine-card.png') });
    await page.close();
  } finally {
    await connection.close();
  }
});

test.serial('MQTT: connected clients and messages from $SYS', async (t) => {
  const instance = instances.mqtt;
  const clients = await Promise.all(
    [1, 2, 3].map(
      (n) =>
        new Promise<mqtt.MqttClient>((resolve, reject) => {
          const client = mqtt.connect(instance.creds.uri as string, { clientId: `stats-${n}-${Date.now()}`, reconnectPeriod: 0 });
          client.once('connect', () => resolve(client)).once('error', reject);
        }),
    ),
  );
  try {
    await Promise.all(clients.map((client) => client.publishAsync('readings/temperature', '21.5', { qos: 1 })));
    // mosquitto publishes $SYS every 10 s.
    const reading = await cardUntil(
      instance,
      'three clients and their messages',
      (r) => value(r, 'clients_connected')! >= 3 && value(r, 'messages_received')! >= 3,
      40_000,
    );
    t.true(value(reading, 'messages_sent')! >= 0);
  } finally {
    await Promise.all(clients.map((client) => client.endAsync()));
  }
});

test.serial('Memcached: items, bytes against the limit, the get hit ratio', async (t) => {
  const instance = instances.memcached;
  const client = memjs.Client.create(instance.creds.servers_with_credentials as string, {
    retries: 0,
    timeout: 2,
    conntimeout: 2,
    keepAlive: false,
    logger: { log() {} },
  });
  try {
    for (let item = 0; item < 5; item++) await client.set(`item-${item}`, 'x'.repeat(1000), { expires: 600 });
    for (const key of ['item-1', 'item-2', 'item-3', 'missing']) await client.get(key);
    const reading = await cardUntil(instance, '5 items', (r) => value(r, 'items') === 5);
    t.true(value(reading, 'used_bytes')! >= 5000);
    t.true(value(reading, 'limit_bytes')! > value(reading, 'used_bytes')!);
    t.is(value(reading, 'hit_ratio'), 0.75, '3 hits, 1 miss');
    t.true(value(reading, 'connections')! >= 1, 'the client is connected');
  } finally {
    client.close();
  }
});

test.serial('Syslog drain: the bytes kept against the max_file_mb cap', async (t) => {
  const instance = instances.syslog;
  const before = await card(instance);
  t.is(value(before, 'limit_bytes'), 2 * 1024 * 1024);
  const kept = value(before, 'stored_bytes')!;
  const drain = new URL(instance.bound.syslog_drain_url as string);
  const socket = createConnection({ host: drain.hostname, port: Number(drain.port) });
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const line = `<14>1 ${new Date().toISOString()} web app 1 - - ${'a log line '.repeat(50)}\n`;
  for (let n = 0; n < 20; n++) socket.write(line);
  await new Promise<void>((resolve) => socket.end(resolve));
  const after = await cardUntil(instance, 'the lines kept', (r) => value(r, 'stored_bytes')! >= kept + 20 * 500);
  t.true(value(after, 'stored_bytes')! <= value(after, 'limit_bytes')!);
});

test.after('card reads that ran the script, wall time through the HTTP API', (t) => {
  const sorted = [...uncached].sort((a, b) => a - b);
  t.log(`${sorted.length} reads; median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted.at(-1)} ms`);
});

test.serial('a stopped container: the card says why, /metrics has up 0 and no numbers for it; back once it runs', async (t) => {
  const instance = instances.redis;
  const [found] = await engine.listContainers({ [LABEL.broker]: env.config.brokerId, [LABEL.instance]: instance.id });
  const container = found!.name;
  t.true(found!.running, 'the instance runs');
  await engine.stopContainer(container, 5);
  try {
    const reading = await cardUntil(instance, 'a reason on the card', (r) => r.reason !== undefined);
    t.regex(reading.reason!, /the container is exited/);
    t.true(reading.stats.every((stat) => stat.value === null));
    const labels = `instance_id="${instance.id}",offering="redis",plan="small"`;
    const text = await waitUntil('up 0 in /metrics', async () => {
      const scraped = await metricsText();
      return scraped.includes(`osb_instance_engine_stats_up{${labels}} 0`) ? scraped : undefined;
    });
    t.false(text.includes(`osb_instance_engine_stat{${labels}`), 'no stale numbers');
    t.true(text.includes(`osb_instance_engine_stats_up{instance_id="${instances.pg.id}",offering="postgresql",plan="small"} 1`), 'the others still report');
  } finally {
    await engine.startContainer(container);
  }
  await cardUntil(instance, 'numbers again', (r) => r.reason === undefined && value(r, 'keys') === 10, 60_000);
});

test.serial('another replica collects once this one stops; kill -9 of that replica makes its readings stale, and /metrics drops them', async (t) => {
  const instance = instances.redis;
  const labels = `instance_id="${instance.id}",offering="redis",plan="small"`;
  const storedAt = async () => {
    const redis = new Redis(env.redisUrl);
    try {
      const raw = await redis.hget(`osb:${env.config.brokerId}:engine-stats`, instance.id);
      return raw === null ? undefined : Date.parse((JSON.parse(raw) as { at: string }).at);
    } finally {
      redis.disconnect();
    }
  };
  await env.broker.engineStats.stop();
  const stopped = Date.now();
  const state = tempStateDir();
  const replica = await spawnBroker({
    PORT: String(await freePort()),
    BROKER_PASSWORD: env.config.password,
    BROKER_ENCRYPTION_KEY: env.config.encryptionKey.toString('hex'),
    REDIS_URL: env.redisUrl,
    BROKER_ID: env.config.brokerId,
    BROKER_PORT_RANGE: `${41000 + 59 * 100}-${41000 + 59 * 100 + 99}`,
    BROKER_STATE_DIR: state.dir,
    BROKER_ENGINE_STATS_SECONDS: '3',
    BROKER_RECONCILE_SECONDS: '0',
    LOG_LEVEL: 'info',
  });
  try {
    await waitUntil('a reading collected by the other replica', async () => ((await storedAt()) ?? 0) > stopped + 500);
    const line = `osb_instance_engine_stat{${labels},stat="keys"} 10`;
    const replicaMetrics = (await replica.client.request('GET', '/metrics', undefined, { version: null })).body as string;
    t.true(replicaMetrics.includes(line), 'the replica reports the numbers');
    t.true((await metricsText()).includes(line), 'this process reports the same numbers from the store');

    await replica.kill('SIGKILL');
    // Nobody collects now: three intervals after the last reading, /metrics leaves it out rather than repeat it.
    await waitUntil('the stale reading left out', async () => !(await metricsText()).includes(`osb_instance_engine_stats_up{${labels}}`), 20_000, 500);
    t.truthy(await storedAt(), 'the reading is still stored: /metrics left it out for its age');
    t.false((await metricsText()).includes(`osb_instance_engine_stat{${labels}`));
  } finally {
    await replica.kill('SIGKILL');
    state.remove();
    env.broker.engineStats.start();
  }
  await waitUntil('numbers again once this process collects', async () => (await metricsText()).includes(`osb_instance_engine_stats_up{${labels}} 1`));
});
