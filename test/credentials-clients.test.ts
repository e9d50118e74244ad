/**
 * Credentials every consumer takes, proved with the real clients against real instances (port block 51):
 * Redis for password-only clients (redis-cli -a, ioredis {host, port, password}) next to the bindings' own ACL users;
 * memjs from memcached's credentials alone; `osb-docker env` naming two bindings of one instance apart for cfenv;
 * the servicebinding.io projection read by a Node app with kube-service-bindings; the Kubernetes Secrets.
 */
import test from 'ava';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import memjs from 'memjs';
import { parseAllDocuments } from 'yaml';
import { LABEL } from '../src/docker/types.js';
import { brokerEnv, CLI, runCommand, type Run } from './helpers/cli.js';
import { engine, startTestBroker, type TestBroker } from './helpers/env.js';

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(51);
});
test.after.always(async () => {
  await env?.stop();
});

const run = (command: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Run> => runCommand(command, args, { env: brokerEnv(env, extraEnv) });

const cli = (...args: string[]) => run(process.execPath, [CLI, ...args]);
const show = (result: Run) => `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;

async function ok(...args: string[]): Promise<Run> {
  const result = await cli(...args);
  if (result.code !== 0) throw new Error(`osb-docker ${args.join(' ')} failed: ${show(result)}`);
  return result;
}

type Vcap = Record<string, Array<{ name: string; binding_name: string; binding_guid: string; instance_guid: string; credentials: Record<string, any> }>>;

async function vcapOf(...names: string[]): Promise<Vcap> {
  return JSON.parse((await ok('env', ...names, '--json')).stdout) as Vcap;
}

/**
 * An ioredis connection that fails at once rather than retrying, so a refused login is an error. ioredis rejects a
 * refused password-only AUTH with "Connection is closed." and emits the server's answer as an error event: the
 * rejection carries both.
 */
async function redisLogin(options: RedisOptions): Promise<Redis> {
  const redis = new Redis({ ...options, lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  const emitted: string[] = [];
  redis.on('error', (error: Error) => emitted.push(error.message));
  try {
    await redis.connect();
    await redis.ping();
  } catch (error) {
    redis.disconnect();
    throw new Error([(error as Error).message, ...emitted].join('; '), { cause: error });
  }
  return redis;
}

/** Resolves once the server closed this connection. */
function closedByServer(redis: Redis): Promise<void> {
  return redis.status === 'end' ? Promise.resolve() : new Promise((resolve) => redis.once('end', () => resolve()));
}

async function containerOf(instanceId: string): Promise<string> {
  const [container] = await engine.listContainers({ [LABEL.broker]: env.config.brokerId, [LABEL.instance]: instanceId });
  if (!container) throw new Error(`no container for instance ${instanceId}`);
  return container.name;
}

/** redis-cli -a <password>, as a user types it, inside the instance's container (the same Redis build). */
async function redisCliWithPassword(container: string, password: string, ...command: string[]): Promise<string> {
  const result = await run('docker', ['exec', container, 'redis-cli', '-h', '127.0.0.1', '-p', '6379', '--no-auth-warning', '-a', password, ...command]);
  return `${result.stdout}${result.stderr}`.trim();
}

test.serial(
  'Redis with password_only_clients: redis-cli -a and ioredis {host, port, password}; bindings keep their own users; unbind and update revoke',
  async (t) => {
    await ok('create', 'redis', 'small', 'pw-cache', '-c', '{"password_only_clients": true}');
    await ok('bind', 'pw-cache');
    await ok('bind', 'pw-cache');
    const entries = (await vcapOf('pw-cache')).redis!;
    t.is(entries.length, 2);
    const [a, b] = entries.map((entry) => entry.credentials) as [Record<string, any>, Record<string, any>];
    t.not(a.password, b.password);
    t.deepEqual(
      Object.keys(a).sort(),
      ['ca_certificate', 'host', 'hostname', 'password', 'port', 'rediss_uri', 'tls_port', 'uri', 'username'],
      'the credentials keep their shape',
    );
    const container = await containerOf(entries[0]!.instance_guid);

    // Password only, as redis-cli -a sends it: logged in as "default", with a binding's rights.
    t.is(await redisCliWithPassword(container, a.password, 'SET', 'from-cli', 'a'), 'OK');
    t.is(await redisCliWithPassword(container, b.password, 'GET', 'from-cli'), 'a');
    t.is(await redisCliWithPassword(container, a.password, 'ACL', 'WHOAMI'), 'default');
    t.regex(await redisCliWithPassword(container, a.password, 'CONFIG', 'GET', 'maxmemory'), /NOPERM/, 'no server administration');
    t.regex(await redisCliWithPassword(container, 'not-a-binding-password', 'PING'), /WRONGPASS|AUTH failed/);

    // ioredis given host, port and password (no username), through the published port.
    const passwordOnlyA = await redisLogin({ host: a.host, port: a.port, password: a.password });
    t.teardown(() => passwordOnlyA.disconnect());
    t.is(await passwordOnlyA.call('ACL', 'WHOAMI'), 'default');
    t.is(await passwordOnlyA.get('from-cli'), 'a');
    const passwordOnlyB = await redisLogin({ host: b.host, port: b.port, password: b.password });
    t.teardown(() => passwordOnlyB.disconnect());

    // The usual uri and username + password: the binding's own ACL user, as before.
    const ownA = await redisLogin({ host: a.host, port: a.port, username: a.username, password: a.password });
    t.teardown(() => ownA.disconnect());
    t.is(await ownA.call('ACL', 'WHOAMI'), a.username);
    const viaUri = new Redis(b.uri, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    viaUri.on('error', () => {});
    await viaUri.connect();
    t.teardown(() => viaUri.disconnect());
    t.is(await viaUri.call('ACL', 'WHOAMI'), b.username);

    // Unbinding a: its password stops working both ways and its sessions end. The server cannot tell whose a
    // password-only session is, so all of them end (b's too: the trade-off); b logs in again, and b's own user lives on.
    const closed = Promise.all([closedByServer(passwordOnlyA), closedByServer(ownA), closedByServer(passwordOnlyB)]);
    await ok('unbind', 'pw-cache', '--as', entries[0]!.binding_name);
    await closed;
    await t.throwsAsync(redisLogin({ host: a.host, port: a.port, password: a.password }), { message: /WRONGPASS/ });
    await t.throwsAsync(redisLogin({ host: a.host, port: a.port, username: a.username, password: a.password }), { message: /WRONGPASS/ });
    t.regex(await redisCliWithPassword(container, a.password, 'PING'), /WRONGPASS|AUTH failed/);
    t.is(await redisCliWithPassword(container, b.password, 'PING'), 'PONG');
    const againB = await redisLogin({ host: b.host, port: b.port, password: b.password });
    t.teardown(() => againB.disconnect());
    t.is(await againB.get('from-cli'), 'a');
    t.is(await viaUri.call('ACL', 'WHOAMI'), b.username, "the other binding's own session lives on");

    // Turned off by an update: password-only logins are refused and their sessions end; b's own user still works.
    const bClosed = closedByServer(againB);
    const instanceId = entries[0]!.instance_guid;
    const patched = await env.client.request('PATCH', `/v2/service_instances/${instanceId}?accepts_incomplete=true`, {
      service_id: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36',
      parameters: { password_only_clients: false },
    });
    t.true([200, 202].includes(patched.status), JSON.stringify(patched.body));
    if (patched.status === 202) t.is((await env.client.waitForInstance(instanceId, patched.body.operation)).body.state, 'succeeded');
    await bClosed;
    await t.throwsAsync(redisLogin({ host: b.host, port: b.port, password: b.password }), { message: /WRONGPASS|NOAUTH/ });
    t.regex(await redisCliWithPassword(container, b.password, 'PING'), /WRONGPASS|AUTH failed/);
    t.is(await viaUri.call('ACL', 'WHOAMI'), b.username);
    await ok('delete', 'pw-cache');
  },
);

test.serial('memjs connects with memcached credentials alone: servers with username and password, or servers_with_credentials', async (t) => {
  await ok('create', 'memcached', 'small', 'sessions');
  await ok('bind', 'sessions');
  const creds = (await vcapOf('sessions')).memcached![0]!.credentials;
  t.is(typeof creds.servers, 'string', "MemCachier's shape: a comma-separated host:port string");

  const withOptions = memjs.Client.create(creds.servers, { username: creds.username, password: creds.password, timeout: 5, retries: 0, logger: { log() {} } });
  t.teardown(() => withOptions.close());
  await withOptions.set('greeting', 'hello', {});
  t.is((await withOptions.get('greeting')).value?.toString(), 'hello');

  // The one string memjs (and MEMCACHIER_SERVERS-style parsers) take as it is: user:password@host:port.
  const fromString = memjs.Client.create(creds.servers_with_credentials, { timeout: 5, retries: 0, logger: { log() {} } });
  t.teardown(() => fromString.close());
  t.is((await fromString.get('greeting')).value?.toString(), 'hello');
  await ok('delete', 'sessions');
});

test.serial('env: two bindings of one instance get two names, which cfenv both sees; servicebinding.io folders and Secrets', async (t) => {
  await ok('create', 'postgresql', 'small', 'orders-db', '-c', '{"database":"orders"}');
  await ok('bind', 'orders-db');
  await ok('bind', 'orders-db', '--as', 'reporting');
  await ok('create', 'redis', 'small', 'cache');
  await ok('bind', 'cache');

  // VCAP_SERVICES: the default binding keeps the instance name, the other has its binding name.
  const vcap = await vcapOf('orders-db', 'cache');
  t.deepEqual(
    vcap.postgresql!.map((entry) => [entry.name, entry.binding_name]),
    [
      ['orders-db', 'orders-db-binding'],
      ['reporting', 'reporting'],
    ],
  );
  const exported = (await ok('env', 'orders-db', 'cache')).stdout.trim();
  const cfenv = await run('sh', [
    '-c',
    `eval "$1" && '${process.execPath}' -e "const e = require('cfenv').getAppEnv({ vcap: { application: { port: 0 } } }); console.log(JSON.stringify(Object.keys(e.getServices()).sort()))"`,
    'sh',
    exported,
  ]);
  t.is(cfenv.code, 0, show(cfenv));
  t.deepEqual(JSON.parse(cfenv.stdout), ['cache', 'orders-db', 'reporting']);

  // --service-binding-root: the projection, and the export line that points at it.
  const scratch = await mkdtemp(path.join(tmpdir(), 'sb-root-'));
  t.teardown(() => rm(scratch, { recursive: true, force: true }));
  const root = path.join(scratch, 'bindings');
  const written = await ok('env', 'orders-db', 'cache', '--service-binding-root', root);
  t.is(written.stdout, `export SERVICE_BINDING_ROOT='${root}'\n`);
  t.deepEqual((await readdir(root)).sort(), ['cache-binding', 'orders-db-binding', 'reporting']);
  const pgCreds = vcap.postgresql![0]!.credentials;
  const pgFolder = path.join(root, 'orders-db-binding');
  t.deepEqual(
    (await readdir(pgFolder)).sort(),
    [
      'database',
      'host',
      'jdbc-url',
      'password',
      'port',
      'provider',
      'type',
      'uri',
      'username',
      ...(pgCreds.ca_certificate ? ['ca.crt', 'root.crt', 'sslrootcert'] : []),
      ...(pgCreds.sslmode ? ['sslmode'] : []),
    ].sort(),
  );
  t.is(await readFile(path.join(pgFolder, 'type'), 'utf8'), 'postgresql');
  t.is(await readFile(path.join(pgFolder, 'password'), 'utf8'), pgCreds.password);
  t.is(await readFile(path.join(root, 'cache-binding', 'type'), 'utf8'), 'redis');
  t.is((await stat(pgFolder)).mode & 0o777, 0o700);
  t.is((await stat(path.join(pgFolder, 'password'))).mode & 0o777, 0o600);

  // A Node app reads the folders with kube-service-bindings and uses both services.
  const app = await run('sh', ['-c', `eval "$1" && '${process.execPath}' examples/service-binding-app/index.js`, 'sh', written.stdout]);
  t.is(app.code, 0, show(app));
  t.regex(app.stdout, /^postgresql: wrote and read back row \d+ of binding_app_visits\nredis: wrote and read back key binding-app:visit:[0-9a-f-]{36}\nok\n$/);

  // --k8s-secret: the same entries as Secrets of type servicebinding.io/<type>.
  const secrets = await ok('env', 'orders-db', 'cache', '--k8s-secret');
  const documents = parseAllDocuments(secrets.stdout).map((document) => document.toJS());
  t.deepEqual(
    documents.map((document) => [document.apiVersion, document.kind, document.metadata.name, document.type]),
    [
      ['v1', 'Secret', 'orders-db-binding', 'servicebinding.io/postgresql'],
      ['v1', 'Secret', 'reporting', 'servicebinding.io/postgresql'],
      ['v1', 'Secret', 'cache-binding', 'servicebinding.io/redis'],
    ],
  );
  for (const [index, folder] of ['orders-db-binding', 'reporting', 'cache-binding'].entries()) {
    const files = Object.fromEntries(
      await Promise.all((await readdir(path.join(root, folder))).map(async (file) => [file, await readFile(path.join(root, folder, file), 'utf8')])),
    );
    t.deepEqual(documents[index].stringData, files, `${folder}: the Secret holds what the folder holds`);
  }
  t.is(documents[2].stringData.username, vcap.redis![0]!.credentials.username);

  for (const name of ['orders-db', 'cache']) await ok('delete', name);
});
