import test, { type ExecutionContext } from 'ava';
import amqp from 'amqplib';
import Docker from 'dockerode';
import { Redis } from 'ioredis';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mysql from 'mysql2/promise';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import pg from 'pg';
import type { ServiceDefinition } from '../../src/catalog/definition.js';
import { loadCatalog } from '../../src/catalog/load.js';
import type { InstanceRecord } from '../../src/store/records.js';
import { RedisStore } from '../../src/store/redis-store.js';
import { Sealer } from '../../src/store/sealer.js';
import type { Creds } from '../helpers/engine-lifecycle.js';
import { startTestBroker, uniqueId, type TestBroker } from '../helpers/env.js';
import { provisionBody } from '../helpers/osb-client.js';

// The per-offering /osb/backup and /osb/restore scripts against the real engines, without the broker's backup code:
// instance A gets data through a binding and the real client, /osb/backup runs in A's container (its stdout, binary,
// is the dump), /osb/restore runs in a new instance B's container with the dump on stdin, and a binding of B reads the
// data back. A truncated dump and every other offering's dump must fail with a clear message and change nothing.
// The scripts get the environment the broker's InstanceScripts gives every script (admin login, plan, PARAM_*).

const docker = new Docker();

let env: TestBroker;
let store: RedisStore;
let definitions: ServiceDefinition[];
test.before(async () => {
  env = await startTestBroker(26);
  // The admin password the scripts get is sealed in the broker's store; the test reads it the way the broker does.
  store = new RedisStore(env.redisUrl, env.config.brokerId, new Sealer(env.config.encryptionKey));
  await store.connect();
  definitions = loadCatalog(env.config.catalogDir, env.config.imagePrefix);
});
test.after.always(async () => {
  await store?.close();
  await env?.stop();
});

const offering = (name: string) => definitions.find((definition) => definition.offering.name === name)!;
const smallPlan = (definition: ServiceDefinition) => definition.offering.plans.find((plan) => plan.name === 'small')!.id;

interface Instance {
  id: string;
  definition: ServiceDefinition;
}

async function provision(t: ExecutionContext, definition: ServiceDefinition, parameters?: Record<string, unknown>): Promise<Instance> {
  const id = uniqueId('bk');
  const accepted = await env.client.provision(id, provisionBody(definition.offering.id, smallPlan(definition), parameters ? { parameters } : {}));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await env.client.waitForInstance(id, accepted.body.operation, 600_000);
  if (done.body.state !== 'succeeded') throw new Error(`provision of ${definition.offering.name} failed: ${done.body.description}`);
  return { id, definition };
}

/** A new binding's credentials; a syslog drain's URL is its only credential. */
async function bind(t: ExecutionContext, instance: Instance): Promise<Creds> {
  const { definition } = instance;
  const reply = await env.client.bind(instance.id, uniqueId('b'), { service_id: definition.offering.id, plan_id: smallPlan(definition) });
  t.is(reply.status, 201, JSON.stringify(reply.body));
  return { ...reply.body.credentials, syslog_drain_url: reply.body.syslog_drain_url };
}

interface ScriptRun {
  exitCode: number;
  stdout: Buffer;
  stderr: string;
  ms: number;
}

async function instanceRecord(instance: Instance): Promise<InstanceRecord> {
  const record = await store.getInstance(instance.id);
  if (!record) throw new Error(`instance ${instance.id} is not in the store`);
  return record;
}

/** The environment src/broker/scripts.ts gives every script: instance id, admin login, plan limits, PARAM_<NAME>. */
function scriptEnv(definition: ServiceDefinition, record: InstanceRecord): string[] {
  const limits = definition.limits.get(record.planId)!;
  const vars: Record<string, string> = {
    INSTANCE_ID: record.id,
    ADMIN_USERNAME: definition.container.adminUsername,
    ADMIN_PASSWORD: record.secrets.adminPassword,
    PLAN_MEMORY_MB: String(limits.memoryMb),
    PLAN_CPUS: String(limits.cpus),
    PLAN_PIDS: String(limits.pids),
  };
  for (const [name, value] of Object.entries(record.parameters)) {
    if (value === undefined || value === null) continue;
    vars[`PARAM_${name.toUpperCase()}`] = typeof value === 'string' ? value : JSON.stringify(value);
  }
  return Object.entries(vars).map(([name, value]) => `${name}=${value}`);
}

/**
 * Runs /osb/<script> in the instance's container as the offering's exec user, with `input` on its stdin (closed after
 * it, so the script sees the end of the dump), and collects stdout as bytes.
 */
async function runScript(instance: Instance, script: 'backup' | 'restore', input?: Buffer): Promise<ScriptRun> {
  const record = await instanceRecord(instance);
  const exec = await docker.getContainer(record.containerName).exec({
    Cmd: [`/osb/${script}`],
    Env: scriptEnv(instance.definition, record),
    User: instance.definition.container.execUser,
    AttachStdin: input !== undefined,
    AttachStdout: true,
    AttachStderr: true,
  });
  const started = Date.now();
  const stream = await exec.start({ hijack: true, stdin: input !== undefined });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  stdout.on('data', (chunk: Buffer) => out.push(chunk));
  stderr.on('data', (chunk: Buffer) => err.push(chunk));
  docker.modem.demuxStream(stream, stdout, stderr);
  const finished = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      stream.destroy();
      reject(new Error(`/osb/${script} did not finish within 120 s`));
    }, 120_000);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    stream.on('end', done);
    stream.on('close', done);
    stream.on('error', (error: Error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  // end() half-closes the connection: the engine closes the script's stdin.
  if (input !== undefined) stream.end(input);
  await finished;
  let state = await exec.inspect();
  for (let attempt = 0; state.Running && attempt < 50; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    state = await exec.inspect();
  }
  return { exitCode: state.ExitCode ?? -1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString(), ms: Date.now() - started };
}

/** How one offering's data is written through a binding of A, and found again through a binding of B. */
interface Case {
  name: string;
  parametersA?: Record<string, unknown>;
  parametersB?: Record<string, unknown>;
  /** Sniffs the dump's format. */
  looksLike(dump: Buffer): boolean;
  write(t: ExecutionContext, credentials: Creds, a: Instance): Promise<void>;
  /** `again`: after the failed restores (checks that may only run once, such as queued messages, are left out). */
  verify(t: ExecutionContext, credentials: Creds, b: Instance, again: boolean): Promise<void>;
}

/** Every byte value, in a binary column, key, value or payload. */
const BINARY = Buffer.from(Array.from({ length: 256 }, (_, index) => index));

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL: tables (bytea included), a serial, a view, a function, a trigger, a large object.

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
  // B's database has another name (and so another group role): the dump is not tied to them.
  parametersA: { database: 'shop' },
  parametersB: { database: 'stock' },
  looksLike: (dump) => dump.subarray(0, 5).toString() === 'PGDMP',
  async write(_t, credentials) {
    await withPg(credentials, async (client) => {
      await client.query(`
        CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, payload bytea);
        CREATE TABLE events (n integer PRIMARY KEY, note text);
        INSERT INTO events SELECT g, repeat('event ' || g, 5) FROM generate_series(1, 20000) g;
        CREATE VIEW recent AS SELECT n, note FROM events WHERE n > 19990;
        CREATE FUNCTION double_it(i integer) RETURNS integer LANGUAGE sql AS 'SELECT i * 2';
        CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$;
        CREATE TRIGGER items_shout BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION shout();
        COMMENT ON TABLE items IS 'restored with its comment';`);
      await client.query('INSERT INTO items (name, payload) VALUES ($1, $2)', ['binary', BINARY]);
      await client.query("SELECT lo_from_bytea(424242, 'a large object')");
    });
  },
  async verify(t, credentials, _b, again) {
    await withPg(credentials, async (client) => {
      const item = await client.query<{ name: string; payload: Buffer }>("SELECT name, payload FROM items WHERE name = 'BINARY'");
      t.true(item.rows[0]?.payload.equals(BINARY), 'bytea comes back byte for byte');
      t.is((await client.query('SELECT count(*)::int AS c FROM events')).rows[0].c, 20000);
      t.is((await client.query('SELECT count(*)::int AS c FROM recent')).rows[0].c, 10);
      t.is((await client.query('SELECT double_it(21) AS v')).rows[0].v, 42);
      t.is((await client.query("SELECT obj_description('items'::regclass) AS d")).rows[0].d, 'restored with its comment');
      t.is((await client.query('SELECT convert_from(lo_get(424242), $1) AS v', ['UTF8'])).rows[0].v, 'a large object');
      // Everything belongs to B's group role, so a binding of B may change the objects, not only read them.
      const owners = await client.query<{ tableowner: string }>("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'");
      t.deepEqual(
        owners.rows.map((row) => row.tableowner),
        ['stock_owner'],
      );
      if (!again) {
        await client.query("INSERT INTO items (name) VALUES ('trigger')");
        t.is((await client.query("SELECT count(*)::int AS c FROM items WHERE name = 'TRIGGER'")).rows[0].c, 1, 'the trigger fires; the serial goes on');
        await client.query('ALTER TABLE events ADD COLUMN extra text');
      }
    });
  },
};

// ---------------------------------------------------------------------------------------------------------------
// MariaDB: a table with a BLOB, a SQL SECURITY DEFINER view, a procedure, a function, a trigger and an event.

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
  parametersA: { database: 'shop' },
  parametersB: { database: 'stock' },
  looksLike: (dump) => /^-- MariaDB dump /m.test(dump.subarray(0, 500).toString()),
  async write(_t, credentials) {
    await withMariaDb(credentials, async (connection) => {
      await connection.query(`
        CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, payload BLOB) ENGINE=InnoDB;
        CREATE TABLE events (n INT PRIMARY KEY, note TEXT) ENGINE=InnoDB;
        CREATE SQL SECURITY DEFINER VIEW recent AS SELECT n, note FROM events WHERE n > 9990;
        CREATE PROCEDURE count_events(OUT total INT) SELECT COUNT(*) INTO total FROM events;
        CREATE FUNCTION double_it(i INT) RETURNS INT DETERMINISTIC RETURN i * 2;
        CREATE TRIGGER items_shout BEFORE INSERT ON items FOR EACH ROW SET NEW.name = UPPER(NEW.name);
        CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM events WHERE n < 0;`);
      // 10,000 rows in a few statements.
      for (let start = 1; start <= 10000; start += 1000) {
        const rows = Array.from({ length: 1000 }, (_, index) => [start + index, `event ${start + index} `.repeat(5)]);
        await connection.query('INSERT INTO events (n, note) VALUES ?', [rows]);
      }
      await connection.execute('INSERT INTO items (name, payload) VALUES (?, ?)', ['binary', BINARY]);
    });
  },
  async verify(t, credentials, _b, again) {
    await withMariaDb(credentials, async (connection) => {
      const [items] = await connection.query<mysql.RowDataPacket[]>("SELECT payload FROM items WHERE name = 'BINARY'");
      const payload: unknown = items[0]?.payload;
      t.true(Buffer.isBuffer(payload) && payload.equals(BINARY), 'the BLOB comes back byte for byte');
      const [count] = await connection.query<mysql.RowDataPacket[]>('SELECT COUNT(*) AS c FROM events');
      t.is(Number(count[0]!.c), 10000);
      // The view, routines and event run as the restore's definer, with a binding's rights.
      const [recent] = await connection.query<mysql.RowDataPacket[]>('SELECT COUNT(*) AS c FROM recent');
      t.is(Number(recent[0]!.c), 10);
      const [called] = await connection.query<mysql.RowDataPacket[][]>('CALL count_events(@total); SELECT @total AS total');
      t.is(Number(called[1]![0]!.total), 10000);
      const [doubled] = await connection.query<mysql.RowDataPacket[]>('SELECT double_it(21) AS v');
      t.is(Number(doubled[0]!.v), 42);
      const [events] = await connection.query<mysql.RowDataPacket[]>('SELECT DEFINER AS definer FROM information_schema.EVENTS');
      t.deepEqual(
        events.map((row) => row.definer),
        ['osb_definer@localhost'],
      );
      if (!again) {
        await connection.query("INSERT INTO items (name) VALUES ('trigger')");
        const [shouted] = await connection.query<mysql.RowDataPacket[]>("SELECT COUNT(*) AS c FROM items WHERE name = 'TRIGGER'");
        t.is(Number(shouted[0]!.c), 1, 'the trigger fires');
      }
    });
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Redis: binary keys and values, several databases, expiry times, a function; the restored data survive a restart
// (the AOF was rewritten).

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
  looksLike: (dump) => dump.subarray(0, 5).toString() === 'REDIS',
  async write(_t, credentials) {
    await withRedis(credentials, async (client) => {
      const batch = client.pipeline();
      for (let index = 0; index < 5000; index++) batch.set(`key:${index}`, `value ${index} `.repeat(4));
      await batch.exec();
      await client.set(Buffer.concat([Buffer.from('bin:'), BINARY]), BINARY);
      await client.set('expiring', 'soon', 'EX', 3600);
      await client.rpush('list', 'a', 'b', 'c');
      await client.call('FUNCTION', 'LOAD', "#!lua name=backuplib\nredis.register_function('answer', function() return 42 end)");
    });
    await withRedis(credentials, (client) => client.hset('hash', { field: 'in database 3' }), 3);
  },
  async verify(t, credentials, b, again) {
    const check = async () => {
      await withRedis(credentials, async (client) => {
        t.is(await client.dbsize(), 5003);
        t.is(await client.get('key:4999'), 'value 4999 '.repeat(4));
        t.true((await client.getBuffer(Buffer.concat([Buffer.from('bin:'), BINARY])))?.equals(BINARY), 'binary key and value');
        const ttl = await client.ttl('expiring');
        t.true(ttl > 3000 && ttl <= 3600, `the expiry time is kept (${ttl} s left)`);
        t.deepEqual(await client.lrange('list', 0, -1), ['a', 'b', 'c']);
        t.is(await client.call('FCALL', 'answer', '0'), 42, 'functions are restored');
      });
      t.is(await withRedis(credentials, (client) => client.hget('hash', 'field'), 3), 'in database 3');
    };
    await check();
    if (!again) {
      // The AOF now holds the restored data: a restart of the container brings them back, not the empty dataset.
      const record = await instanceRecord(b);
      await docker.getContainer(record.containerName).restart({ t: 10 });
      await eventually(() => withRedis(credentials, (client) => client.ping()).then(() => true));
      await check();
    }
  },
};

// ---------------------------------------------------------------------------------------------------------------
// RabbitMQ: a durable topic exchange, a quorum queue, a binding between them, a policy; a message published before
// the backup is not restored (definitions only).

const QUEUE = 'orders.eu';
const EXCHANGE = 'orders';

async function amqpConnect(uri: string) {
  const connection = await amqp.connect(uri, { timeout: 10_000 });
  connection.on('error', () => {});
  return connection;
}

/** A management API request as the instance admin (policies need more than a binding's "management" tag). */
async function adminApi(instance: Instance, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const record = await instanceRecord(instance);
  const auth = Buffer.from(`${instance.definition.container.adminUsername}:${record.secrets.adminPassword}`).toString('base64');
  const response = await fetch(`http://127.0.0.1:${record.extraHostPorts!.management}/api${path}`, {
    method,
    headers: { Authorization: `Basic ${auth}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}

const rabbitmq: Case = {
  name: 'rabbitmq',
  // B's vhost has another name: the definitions go into B's own vhost.
  parametersA: { vhost: 'orders/eu', max_queues: 100 },
  parametersB: { vhost: 'restored' },
  looksLike: (dump) => {
    try {
      return typeof JSON.parse(dump.toString()).rabbit_version === 'string';
    } catch {
      return false;
    }
  },
  async write(t, credentials, a) {
    const connection = await amqpConnect(credentials.uri as string);
    try {
      const channel = await connection.createConfirmChannel();
      await channel.assertExchange(EXCHANGE, 'topic', { durable: true });
      await channel.assertQueue(QUEUE, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
      await channel.bindQueue(QUEUE, EXCHANGE, 'eu.#');
      channel.publish(EXCHANGE, 'eu.order', Buffer.from('a message, not in the backup'), { persistent: true });
      await channel.waitForConfirms();
    } finally {
      await connection.close();
    }
    const policy = await adminApi(a, 'PUT', `/policies/${encodeURIComponent('orders/eu')}/limit-orders`, {
      pattern: '^orders\\.',
      definition: { 'max-length': 1000 },
      'apply-to': 'queues',
    });
    t.true([201, 204].includes(policy.status), JSON.stringify(policy.body));
  },
  async verify(t, credentials, b, again) {
    const connection = await amqpConnect(credentials.uri as string);
    try {
      const channel = await connection.createConfirmChannel();
      const queue = await channel.checkQueue(QUEUE);
      if (!again) t.is(queue.messageCount, 0, 'messages are not part of a backup');
      await channel.checkExchange(EXCHANGE);
      // The binding is back: a message to the exchange reaches the queue.
      channel.publish(EXCHANGE, 'eu.new', Buffer.from('routed'), { persistent: true });
      await channel.waitForConfirms();
      const message = await eventually(() => channel.get(QUEUE, { noAck: true }));
      t.is(message && message.content.toString(), 'routed');
    } finally {
      await connection.close();
    }
    const info = await adminApi(b, 'GET', `/queues/restored/${QUEUE}`);
    t.is(info.body.arguments['x-queue-type'], 'quorum');
    t.is(info.body.vhost, 'restored');
    const policies = await adminApi(b, 'GET', '/policies/restored');
    t.deepEqual(
      policies.body.map((policy: { name: string; definition: unknown }) => [policy.name, policy.definition]),
      [['limit-orders', { 'max-length': 1000 }]],
    );
    const limits = await adminApi(b, 'GET', '/vhost-limits/restored');
    t.deepEqual(limits.body, [], "A's vhost limits are not carried over");
  },
};

// ---------------------------------------------------------------------------------------------------------------
// MQTT: retained messages (one with a binary payload) and a persistent session with a queued QoS 1 message.

/** Connects; resolves with the client and the CONNACK's session-present flag. `onMessage` listens from the start. */
function mqttOpen(
  uri: string,
  options: IClientOptions = {},
  onMessage?: (topic: string, payload: Buffer) => void,
): Promise<{ client: MqttClient; sessionPresent: boolean }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(uri, { clientId: `bk-${randomBytes(4).toString('hex')}`, reconnectPeriod: 0, connectTimeout: 5000, ...options });
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

const SESSION = 'backup-test-session';
const RETAINED: Record<string, Buffer> = {
  'sensors/1/temperature': Buffer.from('21.5'),
  'sensors/2/temperature': Buffer.from('19.0'),
  'sensors/3/raw': BINARY,
};

const mqttCase: Case = {
  name: 'mqtt',
  looksLike: (dump) => dump.subarray(257, 262).toString() === 'ustar',
  async write(_t, credentials) {
    // A persistent session (clean session off) subscribed to jobs/#, then offline: the next job is queued for it.
    const { client: worker } = await mqttOpen(credentials.uri as string, { clientId: SESSION, clean: false });
    await worker.subscribeAsync('jobs/#', { qos: 1 });
    await worker.endAsync();
    const { client: publisher } = await mqttOpen(credentials.uri as string);
    for (const [topic, payload] of Object.entries(RETAINED)) await publisher.publishAsync(topic, payload, { qos: 1, retain: true });
    await publisher.publishAsync('jobs/7', 'queued while offline', { qos: 1 });
    await publisher.endAsync();
  },
  async verify(t, credentials, _b, again) {
    const received = new Map<string, Buffer>();
    const { client: reader } = await mqttOpen(credentials.uri as string, {}, (topic, payload) => received.set(topic, payload));
    await reader.subscribeAsync('sensors/#', { qos: 1 });
    await eventually(async () => received.size >= Object.keys(RETAINED).length || undefined, 5000).catch(() => undefined);
    await reader.endAsync();
    t.deepEqual([...received.keys()].sort(), Object.keys(RETAINED).sort());
    for (const [topic, payload] of Object.entries(RETAINED)) t.true(received.get(topic)?.equals(payload), `retained ${topic}`);
    if (!again) {
      // The session comes back with its subscription and its queued message.
      let job: (text: string) => void = () => {};
      const queued = within(
        new Promise<string>((resolve) => {
          job = resolve;
        }),
        5000,
      );
      const { client: worker, sessionPresent } = await mqttOpen(credentials.uri as string, { clientId: SESSION, clean: false }, (topic, payload) =>
        job(`${topic}: ${payload.toString()}`),
      );
      t.true(sessionPresent, 'the persistent session is restored');
      t.is(await queued, 'jobs/7: queued while offline', 'the queued message arrives');
      await worker.endAsync();
    }
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Syslog drain: lines sent to A over TCP are in B's log files after the restore.

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

/** The drain's log files (current and rotated) of an instance, concatenated. */
async function drainLogs(instance: Instance): Promise<string> {
  const record = await instanceRecord(instance);
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

const LINES = Array.from({ length: 3000 }, (_, index) => `backup test line ${index} ${'x'.repeat(80)}`);

const syslogDrain: Case = {
  name: 'syslog-drain',
  looksLike: (dump) => dump.subarray(257, 262).toString() === 'ustar',
  async write(_t, credentials, a) {
    await sendLines(credentials.syslog_drain_url as string, LINES);
    // 3,000 lines of ~150 bytes: more than one 256 KiB segment, so rotated files are part of the backup too.
    await eventually(async () => (await drainLogs(a)).includes(LINES.at(-1)!) || undefined, 10_000);
  },
  async verify(t, _credentials, b) {
    const logs = await drainLogs(b);
    const missing = LINES.filter((line) => !logs.includes(`myapp[42]: ${line}\n`));
    t.deepEqual(missing, [], 'every line is back');
  },
};

// ---------------------------------------------------------------------------------------------------------------

/** What `promise` resolves to, or undefined after `ms` (the timer never outlives the wait). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
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

const CASES = [postgresql, mariadb, redis, rabbitmq, mqttCase, syslogDrain];

/** Each offering's dump, for the other offerings' "foreign dump" checks; undefined if its backup failed. */
const dumps = new Map<string, { promise: Promise<Buffer | undefined>; settle(dump: Buffer | undefined): void }>();
for (const { name } of CASES) {
  let settle!: (dump: Buffer | undefined) => void;
  const promise = new Promise<Buffer | undefined>((resolve) => {
    settle = resolve;
  });
  dumps.set(name, { promise, settle });
}

test('memcached declares no backups and has no backup scripts', (t) => {
  const memcached = offering('memcached');
  t.false(memcached.backups.supported);
  t.regex(memcached.backups.reason!, /cache/);
  t.false(memcached.scripts.has('backup') || memcached.scripts.has('restore'));
});

for (const spec of CASES) {
  test(`${spec.name}: /osb/backup of one instance, /osb/restore into another, data read back; bad dumps change nothing`, async (t) => {
    const definition = offering(spec.name);
    t.true(definition.backups.supported);
    const own = dumps.get(spec.name)!;
    try {
      const [a, b] = await Promise.all([provision(t, definition, spec.parametersA), provision(t, definition, spec.parametersB)]);
      const credentialsA = await bind(t, a);
      await spec.write(t, credentialsA, a);

      const backup = await runScript(a, 'backup');
      t.is(backup.exitCode, 0, backup.stderr);
      const dump = backup.stdout;
      own.settle(dump);
      t.true(dump.length > 0 && spec.looksLike(dump), `${spec.name} dump format (${dump.subarray(0, 16).toString('hex')})`);
      // Only the dump on stdout; no secret in it or in the messages.
      const adminPassword = (await instanceRecord(a)).secrets.adminPassword;
      for (const secret of [adminPassword, credentialsA.password as string | undefined].filter(Boolean) as string[]) {
        t.false(dump.includes(secret), 'no password in the dump');
        t.false(backup.stderr.includes(secret), 'no password in the messages');
      }

      const restore = await runScript(b, 'restore', dump);
      t.is(restore.exitCode, 0, restore.stderr);
      t.log(`${spec.name}: dump ${dump.length} bytes; backup ${backup.ms} ms, restore ${restore.ms} ms`);
      const credentialsB = await bind(t, b);
      await spec.verify(t, credentialsB, b, false);

      // A truncated dump and the dumps of the other offerings fail with a clear message and change nothing.
      const bad: Array<[string, Buffer]> = [
        ['truncated', dump.subarray(0, Math.floor(dump.length / 2))],
        ['empty', Buffer.alloc(0)],
      ];
      for (const other of CASES.filter((candidate) => candidate !== spec)) {
        const foreign = await within(dumps.get(other.name)!.promise, 240_000);
        if (foreign) bad.push([`${other.name}'s`, foreign]);
        else t.log(`no ${other.name} dump to try (its backup failed)`);
      }
      for (const [what, input] of bad) {
        const refused = await runScript(b, 'restore', input);
        t.not(refused.exitCode, 0, `a ${what} dump is refused`);
        t.regex(refused.stderr, /^restore: (nothing was restored|the dump)/m, `a ${what} dump: ${refused.stderr}`);
        t.false(refused.stderr.includes((await instanceRecord(b)).secrets.adminPassword));
      }
      await spec.verify(t, credentialsB, b, true);
    } finally {
      own.settle(undefined);
    }
  });
}
