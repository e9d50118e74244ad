// Every offering with backups, end to end through the broker: data written through a binding with the real client,
// POST /broker/v1/instances/:id/backups, the instance deprovisioned, a new instance provisioned with restore_from
// {instance, backup: "latest"}, and the same data read back through a binding of the new instance (new credentials).
// Two offerings at a time, so a machine of two cores is not swamped; the local backup store in a folder of its own.
// Port block 43.
import test, { type ExecutionContext } from 'ava';
import amqp from 'amqplib';
import Docker from 'dockerode';
import { Redis } from 'ioredis';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mysql from 'mysql2/promise';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import pg from 'pg';
import type { Config } from '../src/config.js';
import { RedisStore } from '../src/store/redis-store.js';
import { Sealer } from '../src/store/sealer.js';
import type { Creds } from './helpers/engine-lifecycle.js';
import { startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitUntil } from './helpers/wait.js';

const docker = new Docker();
let env: TestBroker;
let store: RedisStore;
let dir: string;

test.before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'osb-backups-offerings-'));
  env = await startTestBroker(43, {
    backup: { store: { kind: 'local', dir }, retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 } },
  } as Partial<Config>);
  // RabbitMQ policies need the instance admin (a binding's "management" tag may not set them): its password is
  // sealed in the broker's store, and read the way the broker reads it.
  store = new RedisStore(env.redisUrl, env.config.brokerId, new Sealer(env.config.encryptionKey));
  await store.connect();
});
test.after.always(async () => {
  await store?.close();
  await env?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** At most two offerings run at once; the others wait their turn. */
let free = 2;
const queue: Array<() => void> = [];
async function inTurn<T>(work: () => Promise<T>): Promise<T> {
  if (free > 0) free--;
  else await new Promise<void>((resolve) => queue.push(resolve));
  try {
    return await work();
  } finally {
    const next = queue.shift();
    if (next) next();
    else free++;
  }
}

interface Offering {
  serviceId: string;
  planId: string;
}

/** The offering's id and its smallest plan ("small" in every catalog folder), from the broker's catalog. */
async function offering(name: string): Promise<Offering> {
  const catalog = await env.client.request('GET', '/v2/catalog');
  const service = catalog.body.services.find((candidate: { name: string }) => candidate.name === name);
  if (!service) throw new Error(`${name} is not in the catalog`);
  return { serviceId: service.id, planId: service.plans.find((plan: { name: string }) => plan.name === 'small').id };
}

async function provision(t: ExecutionContext, target: Offering, parameters?: Record<string, unknown>): Promise<string> {
  const id = uniqueId('bo');
  const accepted = await env.client.provision(id, provisionBody(target.serviceId, target.planId, parameters ? { parameters } : {}));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await env.client.waitForInstance(id, accepted.body.operation, 600_000);
  t.is(done.body.state, 'succeeded', done.body.description);
  if (done.body.state !== 'succeeded') throw new Error(`provision ${id}: ${done.body.description}`);
  return id;
}

async function deprovision(t: ExecutionContext, target: Offering, id: string): Promise<void> {
  const deleting = await env.client.deprovision(id, target.serviceId, target.planId);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  t.is((await env.client.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');
  t.is((await env.client.request('GET', `/v2/service_instances/${id}`)).status, 404);
}

/** A new binding's credentials; a syslog drain's URL is its only credential. */
async function bind(t: ExecutionContext, target: Offering, id: string): Promise<Creds> {
  const reply = await env.client.bind(id, uniqueId('b'), { service_id: target.serviceId, plan_id: target.planId });
  t.is(reply.status, 201, JSON.stringify(reply.body));
  return { ...reply.body.credentials, syslog_drain_url: reply.body.syslog_drain_url };
}

/** POST .../backups, then the listing until that backup has ended. */
async function backUp(id: string): Promise<any> {
  const started = await env.client.request('POST', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
  if (started.status !== 202) throw new Error(`backup: ${started.status} ${JSON.stringify(started.body)}`);
  return waitUntil(
    `backup ${started.body.id} of ${id} to end`,
    async () => {
      const listed = await env.client.request('GET', `/broker/v1/instances/${id}/backups`, undefined, { version: null });
      const backup = listed.body.backups?.find((candidate: { id: string }) => candidate.id === started.body.id);
      return backup?.state !== 'in progress' ? backup : undefined;
    },
    180_000,
    250,
  );
}

/** Polls until `probe` returns something other than undefined (or throws no more). */
async function eventually<T>(probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutMs} ms${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** What `promise` resolves to, or undefined after `ms` (the timer never outlives the wait). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** How an offering's data is written through a binding of the source, and read through one of the restored instance. */
interface Case {
  name: string;
  write(t: ExecutionContext, credentials: Creds, id: string): Promise<void>;
  verify(t: ExecutionContext, credentials: Creds, id: string): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL: rows, a bytea, a view.

const BINARY = Buffer.from(Array.from({ length: 256 }, (_, index) => index));

async function withPg<T>(credentials: Creds, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: credentials.uri as string, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

const postgresql: Case = {
  name: 'postgresql',
  async write(_t, credentials) {
    await withPg(credentials, async (client) => {
      await client.query(`
        CREATE TABLE orders (id integer PRIMARY KEY, item text NOT NULL, blob bytea);
        INSERT INTO orders SELECT g, 'item ' || g, NULL FROM generate_series(1, 5000) g;
        CREATE VIEW big_orders AS SELECT id FROM orders WHERE id > 4990;`);
      await client.query('UPDATE orders SET blob = $1 WHERE id = 1', [BINARY]);
    });
  },
  async verify(t, credentials) {
    await withPg(credentials, async (client) => {
      t.deepEqual((await client.query('SELECT count(*)::int AS n, max(id) AS top FROM orders')).rows, [{ n: 5000, top: 5000 }]);
      t.is((await client.query('SELECT item FROM orders WHERE id = 4321')).rows[0]?.item, 'item 4321');
      t.true((await client.query('SELECT blob FROM orders WHERE id = 1')).rows[0]?.blob.equals(BINARY), 'bytea byte for byte');
      t.is((await client.query('SELECT count(*)::int AS n FROM big_orders')).rows[0]?.n, 10);
      // The restored objects belong to the instance's group role: a binding may change them, not only read them.
      await client.query("INSERT INTO orders (id, item) VALUES (5001, 'after the restore')");
    });
  },
};

// ---------------------------------------------------------------------------------------------------------------
// MariaDB: rows, a BLOB, a trigger.

async function withMariaDb<T>(credentials: Creds, use: (connection: mysql.Connection) => Promise<T>): Promise<T> {
  const connection = await mysql.createConnection({ uri: credentials.uri as string, connectTimeout: 5000, multipleStatements: true });
  try {
    return await use(connection);
  } finally {
    await connection.end().catch(() => connection.destroy());
  }
}

const mariadb: Case = {
  name: 'mariadb',
  async write(_t, credentials) {
    await withMariaDb(credentials, async (connection) => {
      await connection.query(`
        CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(100) NOT NULL, blob_col BLOB) ENGINE=InnoDB;
        CREATE TRIGGER orders_shout BEFORE INSERT ON orders FOR EACH ROW SET NEW.item = UPPER(NEW.item);`);
      const rows = Array.from({ length: 2000 }, (_, index) => [index + 1, `item ${index + 1}`]);
      await connection.query('INSERT INTO orders (id, item) VALUES ?', [rows]);
      await connection.execute('UPDATE orders SET blob_col = ? WHERE id = 1', [BINARY]);
    });
  },
  async verify(t, credentials) {
    await withMariaDb(credentials, async (connection) => {
      const [count] = await connection.query<mysql.RowDataPacket[]>('SELECT COUNT(*) AS n, MAX(item) AS top FROM orders');
      t.is(Number(count[0]!.n), 2000);
      t.is(count[0]!.top, 'ITEM 999');
      const [blob] = await connection.query<mysql.RowDataPacket[]>('SELECT blob_col FROM orders WHERE id = 1');
      const payload: unknown = blob[0]?.blob_col;
      t.true(Buffer.isBuffer(payload) && payload.equals(BINARY), 'the BLOB byte for byte');
      await connection.query("INSERT INTO orders (id, item) VALUES (2001, 'trigger')");
      const [shouted] = await connection.query<mysql.RowDataPacket[]>('SELECT item FROM orders WHERE id = 2001');
      t.is(shouted[0]!.item, 'TRIGGER', 'the trigger is back');
    });
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Redis: keys in two databases, a binary value, an expiry time.

async function withRedis<T>(credentials: Creds, use: (redis: Redis) => Promise<T>, db = 0): Promise<T> {
  const redis = new Redis(credentials.uri as string, { db, lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => {});
  await redis.connect();
  try {
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

const redis: Case = {
  name: 'redis',
  async write(_t, credentials) {
    await withRedis(credentials, async (client) => {
      const batch = client.pipeline();
      for (let index = 0; index < 2000; index++) batch.set(`key:${index}`, `value ${index}`);
      batch.set('binary', BINARY);
      batch.set('expiring', 'soon', 'EX', 3600);
      await batch.exec();
    });
    await withRedis(credentials, (client) => client.hset('hash', { field: 'in database 2' }), 2);
  },
  async verify(t, credentials) {
    await withRedis(credentials, async (client) => {
      t.is(await client.dbsize(), 2002);
      t.is(await client.get('key:1999'), 'value 1999');
      t.true((await client.getBuffer('binary'))?.equals(BINARY), 'binary value byte for byte');
      const ttl = await client.ttl('expiring');
      t.true(ttl > 3000 && ttl <= 3600, `the expiry time is kept (${ttl} s left)`);
    });
    t.is(await withRedis(credentials, (client) => client.hget('hash', 'field'), 2), 'in database 2');
  },
};

// ---------------------------------------------------------------------------------------------------------------
// RabbitMQ: a durable exchange, a durable queue, a binding between them and a policy (definitions; no messages).

const QUEUE = 'orders.eu';
const EXCHANGE = 'orders';

async function amqpConnect(uri: string) {
  const connection = await amqp.connect(uri, { timeout: 10_000 });
  connection.on('error', () => {});
  return connection;
}

/** A management API request as the instance admin. */
async function adminApi(id: string, method: string, apiPath: string, body?: unknown): Promise<{ status: number; body: any }> {
  const record = await store.getInstance(id);
  if (!record) throw new Error(`instance ${id} is not in the store`);
  const auth = Buffer.from(`osb_admin:${record.secrets.adminPassword}`).toString('base64');
  const response = await fetch(`http://127.0.0.1:${record.extraHostPorts!.management}/api${apiPath}`, {
    method,
    headers: { Authorization: `Basic ${auth}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}

const vhostOf = (credentials: Creds) => decodeURIComponent(new URL(credentials.uri as string).pathname.slice(1));

const rabbitmq: Case = {
  name: 'rabbitmq',
  async write(t, credentials, id) {
    const connection = await amqpConnect(credentials.uri as string);
    try {
      const channel = await connection.createConfirmChannel();
      await channel.assertExchange(EXCHANGE, 'topic', { durable: true });
      await channel.assertQueue(QUEUE, { durable: true });
      await channel.bindQueue(QUEUE, EXCHANGE, 'eu.#');
      channel.publish(EXCHANGE, 'eu.order', Buffer.from('a message, not in a backup'), { persistent: true });
      await channel.waitForConfirms();
    } finally {
      await connection.close();
    }
    const policy = await adminApi(id, 'PUT', `/policies/${encodeURIComponent(vhostOf(credentials))}/limit-orders`, {
      pattern: '^orders\\.',
      definition: { 'max-length': 1000 },
      'apply-to': 'queues',
    });
    t.true([201, 204].includes(policy.status), JSON.stringify(policy.body));
  },
  async verify(t, credentials, id) {
    const connection = await amqpConnect(credentials.uri as string);
    try {
      const channel = await connection.createConfirmChannel();
      t.is((await channel.checkQueue(QUEUE)).messageCount, 0, 'messages are not part of a backup');
      await channel.checkExchange(EXCHANGE);
      // The binding is back: a message to the exchange reaches the queue.
      channel.publish(EXCHANGE, 'eu.new', Buffer.from('routed'), { persistent: true });
      await channel.waitForConfirms();
      const message = await eventually(async () => (await channel.get(QUEUE, { noAck: true })) || undefined);
      t.is(message.content.toString(), 'routed');
    } finally {
      await connection.close();
    }
    const policies = await adminApi(id, 'GET', `/policies/${encodeURIComponent(vhostOf(credentials))}`);
    t.deepEqual(
      policies.body.map((policy: { name: string; definition: unknown }) => [policy.name, policy.definition]),
      [['limit-orders', { 'max-length': 1000 }]],
    );
  },
};

// ---------------------------------------------------------------------------------------------------------------
// MQTT: retained messages and a persistent session with a queued QoS 1 message (mosquitto's persistence database).

function mqttOpen(
  uri: string,
  options: IClientOptions = {},
  onMessage?: (topic: string, payload: Buffer) => void,
): Promise<{ client: MqttClient; sessionPresent: boolean }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(uri, { clientId: `bo-${randomBytes(4).toString('hex')}`, reconnectPeriod: 0, connectTimeout: 5000, ...options });
    if (onMessage) client.on('message', onMessage);
    client.once('connect', (connack) => {
      client.on('error', () => {});
      resolve({ client, sessionPresent: connack.sessionPresent });
    });
    client.once('error', (error) => {
      client.end(true);
      reject(error);
    });
  });
}

const SESSION = 'backups-offerings-session';
const RETAINED: Record<string, Buffer> = { 'sensors/1/temperature': Buffer.from('21.5'), 'sensors/2/raw': BINARY };

const mqttCase: Case = {
  name: 'mqtt',
  async write(_t, credentials) {
    const { client: worker } = await mqttOpen(credentials.uri as string, { clientId: SESSION, clean: false });
    await worker.subscribeAsync('jobs/#', { qos: 1 });
    await worker.endAsync();
    const { client: publisher } = await mqttOpen(credentials.uri as string);
    for (const [topic, payload] of Object.entries(RETAINED)) await publisher.publishAsync(topic, payload, { qos: 1, retain: true });
    await publisher.publishAsync('jobs/7', 'queued while offline', { qos: 1 });
    await publisher.endAsync();
  },
  async verify(t, credentials) {
    const received = new Map<string, Buffer>();
    const { client: reader } = await mqttOpen(credentials.uri as string, {}, (topic, payload) => received.set(topic, payload));
    await reader.subscribeAsync('sensors/#', { qos: 1 });
    await eventually(async () => received.size >= Object.keys(RETAINED).length || undefined, 10_000).catch(() => undefined);
    await reader.endAsync();
    t.deepEqual([...received.keys()].sort(), Object.keys(RETAINED).sort());
    for (const [topic, payload] of Object.entries(RETAINED)) t.true(received.get(topic)?.equals(payload), `retained ${topic}`);

    // The session comes back with its subscription and its queued message.
    let job: (text: string) => void = () => {};
    const queued = new Promise<string>((resolve) => (job = resolve));
    const { client: worker, sessionPresent } = await mqttOpen(credentials.uri as string, { clientId: SESSION, clean: false }, (topic, payload) =>
      job(`${topic}: ${payload.toString()}`),
    );
    try {
      t.true(sessionPresent, 'the persistent session is restored');
      const message = await within(queued, 10_000);
      t.is(message, 'jobs/7: queued while offline', 'the queued message arrives');
    } finally {
      await worker.endAsync();
    }
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Syslog drain: lines sent over TCP are in the restored drain's log files.

const LOG_DIR = '/var/lib/syslog-drain/logs';

async function sendLines(url: string, lines: string[]): Promise<void> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  for (const line of lines) socket.write(`<14>1 2026-11-22T10:00:00Z myhost myapp 42 - - ${line}\n`);
  await new Promise<void>((resolve) => socket.end(resolve));
}

/** The drain's kept log files (rotated and current) of an instance, read inside its container. */
async function drainLogs(id: string): Promise<string> {
  const record = await store.getInstance(id);
  if (!record) throw new Error(`instance ${id} is not in the store`);
  const exec = await docker.getContainer(record.containerName).exec({
    Cmd: ['sh', '-c', `cat ${LOG_DIR}/drain.log.* ${LOG_DIR}/drain.log 2>/dev/null`],
    User: 'syslog',
    AttachStdout: true,
    AttachStderr: true,
  });
  const stream = await exec.start({ hijack: true, stdin: false });
  const out: Buffer[] = [];
  const stdout = new PassThrough();
  stdout.on('data', (chunk: Buffer) => out.push(chunk));
  docker.modem.demuxStream(stream, stdout, new PassThrough());
  await new Promise((resolve) => stream.on('end', resolve));
  return Buffer.concat(out).toString();
}

const LINES = Array.from({ length: 500 }, (_, index) => `restored line ${index} ${randomBytes(4).toString('hex')}`);

const syslogDrain: Case = {
  name: 'syslog-drain',
  async write(_t, credentials, id) {
    await sendLines(credentials.syslog_drain_url as string, LINES);
    await eventually(async () => (await drainLogs(id)).includes(LINES.at(-1)!) || undefined, 30_000);
  },
  async verify(t, _credentials, id) {
    const logs = await drainLogs(id);
    t.deepEqual(
      LINES.filter((line) => !logs.includes(`myapp[42]: ${line}\n`)),
      [],
      'every line is back',
    );
  },
};

// ---------------------------------------------------------------------------------------------------------------

for (const spec of [postgresql, mariadb, redis, rabbitmq, mqttCase, syslogDrain]) {
  test(`${spec.name}: written through a binding, backed up, deprovisioned, restored into a new instance with restore_from, read back`, (t) =>
    inTurn(async () => {
      const started = Date.now();
      const target = await offering(spec.name);
      const source = await provision(t, target);
      await spec.write(t, await bind(t, target, source), source);

      const backup = await backUp(source);
      t.is(backup.state, 'succeeded', backup.description);
      t.true(backup.size > 0 && backup.dump_size > 0, JSON.stringify(backup));
      t.is(backup.origin, 'manual');
      await deprovision(t, target, source);

      const restored = await provision(t, target, { restore_from: { instance: source, backup: 'latest' } });
      await spec.verify(t, await bind(t, target, restored), restored);
      await deprovision(t, target, restored);
      t.log(`${spec.name}: dump ${backup.dump_size} bytes, stored ${backup.size} bytes; ${((Date.now() - started) / 1000).toFixed(0)} s in all`);
    }));
}
