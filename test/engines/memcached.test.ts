import { execFile, execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import memjs from 'memjs';
import { PACKAGE_ROOT } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { startBroker, type RunningBroker } from '../../src/server.js';
import { engineLifecycle, type Creds, type EngineClient } from '../helpers/engine-lifecycle.js';
import { brokerObjects, engine, startTestBroker, uniqueId, type TestBroker } from '../helpers/env.js';
import { OsbClient, provisionBody } from '../helpers/osb-client.js';

const MEMCACHED = {
  service: '97fa3eaf-8e67-4001-af44-0f4f8921ff48',
  small: '21fe54ca-7324-41da-a2a5-1050ef67e0dc',
  medium: '82491196-e350-4c7e-8b02-d54556300933',
};

const run = promisify(execFile);

// The tests of this file run one after the other: the upgrade test replaces the broker.
let env: TestBroker;
let upgraded: RunningBroker | undefined;
let upgradeCatalog: string | undefined;
const upgradePrefix = `osb-memcached-upgrade-test-${process.pid}/`;
test.before(async () => {
  env = await startTestBroker(14);
});
test.after.always(async () => {
  await upgraded?.close();
  await env?.stop();
  if (upgradeCatalog) rmSync(upgradeCatalog, { recursive: true, force: true });
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${upgradePrefix}memcached:1.6.20`], { stdio: 'ignore' });
  } catch {
    // Never built.
  }
});

/** A memjs client that fails at once instead of retrying, and logs nothing. `user:pass@` is left out when not given. */
function connect(server: string, username?: string, password?: string) {
  const auth = username === undefined ? '' : `${username}:${password}@`;
  return memjs.Client.create(`${auth}${server}`, { retries: 0, timeout: 2, conntimeout: 2, keepAlive: false, logger: { log() {} } });
}

/** memjs rejects with strings or response objects; assertions want Errors. */
async function failing<T>(operation: Promise<T>): Promise<T> {
  try {
    return await operation;
  } catch (error) {
    throw error instanceof Error ? error : new Error(`memcached: ${typeof error === 'string' ? error : JSON.stringify(error)}`);
  }
}

/** One client per call, closed afterwards, so every call is a fresh SASL login. */
async function withClient<T>(credentials: Creds, use: (client: memjs.Client) => Promise<T>): Promise<T> {
  const client = connect(`${credentials.host}:${credentials.port}`, credentials.username, credentials.password);
  try {
    return await failing(use(client));
  } finally {
    client.close();
  }
}

/** Binary protocol with SASL PLAIN through memjs; all bindings of an instance share one key space. */
const memcached: EngineClient = {
  async write(credentials, key, value) {
    const stored = await withClient(credentials, (client) => client.set(key, value, { expires: 0 }));
    if (!stored) throw new Error(`memcached did not store ${key}`);
  },
  async read(credentials, key) {
    const { value } = await withClient(credentials, (client) => client.get(key));
    return value === null ? undefined : value.toString();
  },
  async login(credentials) {
    await withClient(credentials, (client) => client.get('osb-login-probe'));
  },
};

test.serial('the catalog offers memcached', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  const offering = catalog.body.services.find((service: any) => service.id === MEMCACHED.service);
  t.truthy(offering, 'the memcached offering is listed');
  t.is(offering.name, 'memcached');
  t.deepEqual(offering.tags, ['memcached', 'cache']);
  t.true(offering.bindable);
  t.deepEqual(
    offering.plans.map((plan: any) => [plan.id, plan.name]),
    [
      [MEMCACHED.small, 'small'],
      [MEMCACHED.medium, 'medium'],
    ],
  );
  t.deepEqual(offering.plans[0].maintenance_info, {
    version: '1.6.19',
    description: 'Memcached 1.6.18 with Cyrus SASL and TLS on Debian bookworm, with engine stats',
  });
  t.false('limits' in offering.plans[0], 'plan limits stay inside the broker');
});

test.serial('memcached lifecycle: one SASL user per binding, shared keys, refused logins', async (t) => {
  const { config } = env;
  await engineLifecycle(t, env, { serviceId: MEMCACHED.service, planId: MEMCACHED.small, parameters: { max_item_size_mb: 2 } }, memcached, async ([a, b]) => {
    // Credential shape: exact keys, an encoded uri, MemCachier's servers string, a numeric port.
    t.deepEqual(Object.keys(a).sort(), [
      'ca_certificate',
      'host',
      'hostname',
      'memcacheds_uri',
      'password',
      'port',
      'servers',
      'servers_with_credentials',
      'tls_port',
      'tls_servers',
      'tls_servers_with_credentials',
      'uri',
      'username',
    ]);
    t.is(a.uri, `memcached://${encodeURIComponent(a.username)}:${encodeURIComponent(a.password)}@${config.advertisedHost}:${a.port}`);
    t.is(a.servers, `${config.advertisedHost}:${a.port}`);
    t.is(a.servers_with_credentials, `${a.username}:${a.password}@${config.advertisedHost}:${a.port}`);
    t.is(b.port, a.port);
    t.regex(a.username, /^u[a-z0-9]{15}$/);

    // Without credentials, or with a wrong password, nothing is served. (A fresh client each time: memjs marks a
    // server that failed as dead and never answers the next request on that client.)
    const anonymous = { host: a.host, port: a.port };
    await t.throwsAsync(() => withClient(anonymous, (client) => client.get('written-by-first')), undefined, 'a connection without SASL login is refused');
    await t.throwsAsync(() => withClient(anonymous, (client) => client.set('anonymous', 'x', {})), undefined, 'an anonymous write is refused');
    await t.throwsAsync(() => memcached.login({ ...a, password: `${a.password}x` }), undefined, 'a wrong password is refused');
    await t.throwsAsync(() => memcached.login({ ...a, username: 'osb_admin' }), undefined, 'the admin user does not take a binding password');

    // The parameter reached memcached: items up to 2 MiB are stored (the default is 1 MiB), larger ones are not.
    const big = 'x'.repeat(1536 * 1024);
    await memcached.write(a, 'big', big);
    t.is((await memcached.read(b, 'big'))?.length, big.length, 'a 1.5 MiB item is stored');
    await t.throwsAsync(() => withClient(a, (client) => client.set('too-big', 'x'.repeat(3 * 1024 * 1024), {})), undefined, 'a 3 MiB item is refused');

    // memcached is the entry point's child (which restarts it on new TLS files), with the plan's cache size: 128 MiB
    // limit - 48 MiB headroom, and TLS on a port of its own next to the plain one.
    const { containers } = await brokerObjects(config.brokerId);
    t.is(containers.length, 1);
    const entry = await engine.exec(containers[0]!.name, ['cat', '/proc/1/cmdline'], { user: 'memcache' });
    t.is(entry.stdout.split('\0').filter(Boolean).join(' '), 'bash /osb/lib/start');
    const pid = (await engine.exec(containers[0]!.name, ['cat', '/tmp/osb-memcached-pid'], { user: 'memcache' })).stdout.trim();
    const cmdline = await engine.exec(containers[0]!.name, ['cat', `/proc/${pid}/cmdline`], { user: 'memcache' });
    t.is(
      cmdline.stdout.split('\0').filter(Boolean).join(' '),
      '/usr/bin/memcached -S -v -U 0 -Z -o ssl_chain_cert=/etc/osb-tls/cert.pem,ssl_key=/etc/osb-tls/key.pem,ssl_min_version=2 ' +
        '-l notls:0.0.0.0:11211 -l 0.0.0.0:11212 -m 80 -I 2m -c 1024',
    );

    const status = await engine.exec(containers[0]!.name, ['cat', `/proc/${pid}/status`], { user: 'memcache' });
    t.regex(status.stdout, /^Uid:\s+999\s/m, 'memcached runs as the memcache user');

    // No password ever reached the container's log or the broker's log.
    const { stdout, stderr } = await run('docker', ['logs', containers[0]!.name]);
    t.regex(stdout, /osb: memcached with 80 MiB cache \(container limit 128 MiB\), items up to 2 MiB/);
    t.regex(stderr, /Initialized SASL/);
    for (const text of [stdout, stderr, ...env.logs]) {
      t.false(text.includes(a.password) || text.includes(b.password), 'no binding password in any log');
    }
  });
});

test.serial('an upgrade replaces the container; SASL users move to the new host name and keep working', async (t) => {
  const id = uniqueId();
  const accepted = await env.client.provision(id, provisionBody(MEMCACHED.service, MEMCACHED.small));
  t.is((await env.client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const bound = await env.client.bind(id, 'keeper', { service_id: MEMCACHED.service, plan_id: MEMCACHED.small });
  t.is(bound.status, 201);
  const keeper: Creds = bound.body.credentials;
  await memcached.write(keeper, 'before', 'the upgrade');
  const before = (await brokerObjects(env.config.brokerId)).containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;

  // The operator ships maintenance version 1.6.20 and restarts the broker; the platform sends the new maintenance_info.
  upgradeCatalog = mkdtempSync(path.join(tmpdir(), 'catalog-memcached-'));
  cpSync(path.join(PACKAGE_ROOT, 'catalog', 'memcached'), path.join(upgradeCatalog, 'memcached'), { recursive: true });
  const file = path.join(upgradeCatalog, 'memcached', 'service.json');
  const service = JSON.parse(readFileSync(file, 'utf8'));
  service.maintenance_info.version = '1.6.20';
  writeFileSync(file, JSON.stringify(service));
  await env.broker.close();
  upgraded = await startBroker({ ...env.config, catalogDir: upgradeCatalog, imagePrefix: upgradePrefix }, createLogger('silent'));
  const client = new OsbClient(upgraded.url, env.config.username, env.config.password);
  const upgrade = await client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: MEMCACHED.service,
    maintenance_info: { version: '1.6.20' },
  });
  t.is(upgrade.status, 202, JSON.stringify(upgrade.body));
  const done = await client.waitForInstance(id, upgrade.body.operation);
  t.is(done.body.state, 'succeeded', done.body.description);

  const after = (await brokerObjects(env.config.brokerId)).containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;
  t.not(after.id, before.id, 'the container was replaced');
  t.is(after.image, `${upgradePrefix}memcached:1.6.20`);
  // memcached's own port (a container with a TLS port publishes two, listed in no fixed order).
  t.is(execFileSync('docker', ['port', after.name, '11211/tcp']).toString().trim(), `127.0.0.1:${keeper.port}`, 'the port stayed');
  const hostname = async (name: string) => (await engine.exec(name, ['cat', '/proc/sys/kernel/hostname'], { user: 'memcache' })).stdout.trim();
  t.is(await hostname(after.name), after.id.slice(0, 12), 'the new container has a new host name, hence a new SASL realm');
  const users = await engine.exec(after.name, ['sasldblistusers2', '-f', '/var/lib/memcached/sasldb2'], { user: 'memcache' });
  t.deepEqual(
    users.stdout.trim().split('\n').sort(),
    [`${keeper.username}@${after.id.slice(0, 12)}: userPassword`, `osb_admin@${after.id.slice(0, 12)}: userPassword`].sort(),
  );

  await t.notThrowsAsync(() => memcached.login(keeper), 'the binding made before the upgrade still logs in');
  t.is(await memcached.read(keeper, 'before'), undefined, 'the cache is memory only: the upgrade emptied it');
  const fresh = await client.bind(id, 'fresh', { service_id: MEMCACHED.service, plan_id: MEMCACHED.small });
  t.is(fresh.status, 201, JSON.stringify(fresh.body));
  await memcached.write(fresh.body.credentials, 'after', 'the upgrade');
  t.is(await memcached.read(keeper, 'after'), 'the upgrade');
  t.is((await client.unbind(id, 'keeper', MEMCACHED.service, MEMCACHED.small)).status, 200);
  await t.throwsAsync(() => memcached.login(keeper), undefined, 'unbinding after the upgrade removes the user');

  const deleting = await client.deprovision(id, MEMCACHED.service, MEMCACHED.small);
  t.is((await client.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');
});
