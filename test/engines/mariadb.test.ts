import test from 'ava';
import Docker from 'dockerode';
import mysql from 'mysql2/promise';
import { engineLifecycle, type Creds, type EngineClient } from '../helpers/engine-lifecycle.js';
import { inspectRaw } from '../helpers/engine-watch.js';
import { brokerObjects, engine, startTestBroker, uniqueId, type TestBroker } from '../helpers/env.js';
import { provisionBody } from '../helpers/osb-client.js';

const MARIADB = {
  service: '0f5e3bfd-1d78-49ad-9f16-78ce4c376b52',
  small: 'c65006c3-2c84-4a77-93b1-c14c76cd9075',
  medium: 'ec8c5294-aaba-4a9a-98ae-c369daa76eb2',
};

const docker = new Docker();

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(10);
});
test.after.always(async () => {
  await env?.stop();
});

/** A connection through bound credentials: the uri exactly as an application would use it. */
const connect = (credentials: Creds) => mysql.createConnection({ uri: credentials.uri, connectTimeout: 5000 });

async function withConnection<T>(credentials: Creds, use: (connection: mysql.Connection) => Promise<T>): Promise<T> {
  const connection = await connect(credentials);
  try {
    return await use(connection);
  } finally {
    await connection.end().catch(() => connection.destroy());
  }
}

const client: EngineClient = {
  async write(credentials, key, value) {
    await withConnection(credentials, async (connection) => {
      // The first binding to write creates the table; every binding uses it.
      await connection.query('CREATE TABLE IF NOT EXISTS kv (k VARCHAR(191) PRIMARY KEY, v TEXT NOT NULL)');
      await connection.execute('INSERT INTO kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)', [key, value]);
    });
  },
  async read(credentials, key) {
    return withConnection(credentials, async (connection) => {
      const [rows] = await connection.execute<mysql.RowDataPacket[]>('SELECT v FROM kv WHERE k = ?', [key]);
      return rows[0]?.v as string | undefined;
    });
  },
  async login(credentials) {
    await withConnection(credentials, async (connection) => {
      await connection.query('SELECT 1');
    });
  },
};

async function waitForLogin(credentials: Creds, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await client.login(credentials);
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

test('the catalog offers mariadb with its tags, plans and parameters', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  const offering = catalog.body.services.find((service: any) => service.name === 'mariadb');
  t.truthy(offering, 'mariadb is in the catalog');
  t.is(offering.id, MARIADB.service);
  t.deepEqual(offering.tags, ['mysql', 'mariadb', 'relational', 'sql']);
  t.true(offering.bindable);
  t.deepEqual(
    offering.plans.map((plan: any) => [plan.name, plan.id]),
    [
      ['small', MARIADB.small],
      ['medium', MARIADB.medium],
    ],
  );
  for (const plan of offering.plans) {
    t.is(plan.limits, undefined, 'limits are not sent to platforms');
    t.deepEqual(plan.maintenance_info, { version: '10.11.2', description: 'MariaDB 10.11 on Debian bookworm, with backup and restore, TLS and engine stats' });
    const schema = plan.schemas.service_instance.create.parameters;
    t.is(schema.properties.database.default, 'app');
    t.is(schema.properties.max_connections.type, 'integer');
  }
});

test('mariadb lifecycle through bound credentials (mysql2)', async (t) => {
  await engineLifecycle(t, env, { serviceId: MARIADB.service, planId: MARIADB.small }, client, async ([a, b]) => {
    // Credential shape.
    const host = env.config.advertisedHost;
    for (const c of [a, b]) {
      t.regex(c.username, /^u[a-z0-9]{15}$/);
      t.is(c.name, 'app');
      t.is(c.database, 'app');
      t.is(c.uri, `mysql://${encodeURIComponent(c.username)}:${encodeURIComponent(c.password)}@${host}:${c.port}/app`);
      t.is(c.jdbcUrl, `jdbc:mysql://${host}:${c.port}/app?user=${encodeURIComponent(c.username)}&password=${encodeURIComponent(c.password)}`);
      t.deepEqual(Object.keys(c).sort(), ['ca_certificate', 'database', 'host', 'hostname', 'jdbcUrl', 'name', 'password', 'port', 'ssl', 'uri', 'username']);
    }

    await withConnection(a, async (connection) => {
      // Only the instance database is visible, and everything may be done in it.
      const [databases] = await connection.query<mysql.RowDataPacket[]>('SHOW DATABASES');
      t.deepEqual(databases.map((row) => row.Database).sort(), ['app', 'information_schema']);
      const [grants] = await connection.query<mysql.RowDataPacket[]>('SHOW GRANTS');
      const text = grants.map((row) => Object.values(row)[0] as string);
      t.is(text.length, 2, text.join('\n'));
      t.regex(text[0]!, /^GRANT USAGE ON \*\.\* TO /);
      t.regex(text[1]!, /^GRANT ALL PRIVILEGES ON `app`\.\* TO /);
      t.false(
        text.some((line) => /WITH GRANT OPTION/.test(line)),
        'no GRANT OPTION',
      );
      await connection.query('CREATE TABLE scratch (id INT PRIMARY KEY)');
      await connection.query('CREATE INDEX scratch_id ON scratch (id)');
      await connection.query('DROP TABLE scratch');

      // No other database, no system tables, no account management, no server administration.
      await t.throwsAsync(() => connection.query('CREATE DATABASE other'), { message: /Access denied/ });
      await t.throwsAsync(() => connection.query('SELECT User FROM mysql.user'), { message: /command denied|Access denied/ });
      await t.throwsAsync(() => connection.query('SELECT * FROM mysql.global_priv'), { message: /command denied|Access denied/ });
      await t.throwsAsync(() => connection.query("CREATE USER 'intruder'@'%' IDENTIFIED BY 'x'"), { message: /Access denied|denied/ });
      await t.throwsAsync(() => connection.query(`GRANT SELECT ON app.* TO '${b.username}'@'%'`), { message: /Access denied|denied/ });
      await t.throwsAsync(() => connection.query('SET GLOBAL max_connections = 1000'), { message: /Access denied|denied/ });
      await t.throwsAsync(() => connection.query('SHUTDOWN'), { message: /Access denied|denied/ });
      const fileRead = await connection.query<mysql.RowDataPacket[]>("SELECT LOAD_FILE('/etc/passwd') AS f").then(
        ([rows]) => rows[0]?.f,
        () => null,
      );
      t.is(fileRead, null, 'no FILE privilege');
    });
    // The other binding's sessions are not visible.
    await withConnection(b, async (other) => {
      const [rows] = await other.query<mysql.RowDataPacket[]>('SELECT DISTINCT USER FROM information_schema.PROCESSLIST');
      t.deepEqual(
        rows.map((row) => row.USER),
        [b.username],
      );
    });
  });
});

test('mariadb: unbind ends open sessions; parameters apply live and survive a restart', async (t) => {
  const { client: osb } = env;
  const id = uniqueId();
  const started = Date.now();
  const accepted = await osb.provision(id, provisionBody(MARIADB.service, MARIADB.small, { parameters: { database: 'shop', max_connections: 60 } }));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  t.is((await osb.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  t.log(`provisioned in ${Date.now() - started} ms`);

  const bindStarted = Date.now();
  const bound = await osb.bind(id, 'keeper', { service_id: MARIADB.service, plan_id: MARIADB.small });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  t.log(`bound in ${Date.now() - bindStarted} ms`);
  const keeper: Creds = bound.body.credentials;
  t.is(keeper.database, 'shop');
  t.true(keeper.uri.endsWith(`:${keeper.port}/shop`));
  const doomed: Creds = (await osb.bind(id, 'doomed', { service_id: MARIADB.service, plan_id: MARIADB.small })).body.credentials;

  // The container runs unprivileged.
  const { containers } = await brokerObjects(env.config.brokerId);
  const container = containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;
  const raw = await inspectRaw(container.name);
  t.deepEqual(raw.HostConfig.CapDrop, ['ALL']);
  t.is(raw.Config.User, 'mysql');

  const globals = async (credentials: Creds) =>
    withConnection(credentials, async (connection) => {
      const [rows] = await connection.query<mysql.RowDataPacket[]>(
        'SELECT @@global.max_connections AS mc, @@global.slow_query_log AS slow, @@global.long_query_time AS lqt',
      );
      return { mc: Number(rows[0]!.mc), slow: Number(rows[0]!.slow), lqt: Number(rows[0]!.lqt) };
    });
  t.deepEqual(await globals(keeper), { mc: 60, slow: 0, lqt: 10 });

  // An open session of a binding is ended by its unbind.
  const session = await connect(doomed);
  session.on('error', () => {});
  await session.query('CREATE TABLE t (id INT)');
  const unbound = await osb.unbind(id, 'doomed', MARIADB.service, MARIADB.small);
  t.is(unbound.status, 200);
  await t.throwsAsync(() => session.query('SELECT 1'));
  session.destroy();
  await t.throwsAsync(() => client.login(doomed), { message: /Access denied/ });
  await withConnection(keeper, async (connection) => {
    await connection.query('INSERT INTO t VALUES (1)');
  });

  // Updatable parameters: applied without a restart, kept across one.
  const patched = await osb.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: MARIADB.service,
    parameters: { max_connections: 150, long_query_time: 0.5 },
  });
  t.is(patched.status, 202, JSON.stringify(patched.body));
  t.is((await osb.waitForInstance(id, patched.body.operation)).body.state, 'succeeded');
  const before = (await engine.inspectContainer(container.name))!.startedAt;
  t.deepEqual(await globals(keeper), { mc: 150, slow: 1, lqt: 0.5 });
  t.is((await engine.inspectContainer(container.name))!.startedAt, before, 'not restarted');

  const refused = await osb.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: MARIADB.service,
    parameters: { database: 'other' },
  });
  t.is(refused.status, 422);

  await docker.getContainer(container.name).restart({ t: 10 });
  await waitForLogin(keeper);
  t.deepEqual(await globals(keeper), { mc: 150, slow: 1, lqt: 0.5 });
  await withConnection(keeper, async (connection) => {
    const [rows] = await connection.query<mysql.RowDataPacket[]>('SELECT COUNT(*) AS n FROM t');
    t.is(Number(rows[0]!.n), 1);
  });

  const deleting = await osb.deprovision(id, MARIADB.service, MARIADB.small);
  t.is(deleting.status, 202);
  t.is((await osb.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');

  const logged = env.logs.join('');
  for (const secret of [keeper.password, doomed.password]) t.false(logged.includes(secret), 'no password in the broker logs');
});
