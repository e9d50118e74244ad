import test from 'ava';
import Docker from 'dockerode';
import { Redis, type RedisOptions } from 'ioredis';
import { engineLifecycle, type Creds, type EngineClient } from '../helpers/engine-lifecycle.js';
import { inspectRaw } from '../helpers/engine-watch.js';
import { brokerObjects, engine, startTestBroker, uniqueId, type TestBroker } from '../helpers/env.js';
import { provisionBody } from '../helpers/osb-client.js';

const REDIS = {
  service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36',
  small: '92776b7b-46d1-4950-91fb-9b675ca53968',
  medium: '4f3f10d0-dc6b-4a00-b8ad-a4ecaf80e367',
};

const docker = new Docker();

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(11);
});
test.after.always(async () => {
  await env?.stop();
});

/** A connection through bound credentials (the uri as an application uses it), or through host and port only. */
async function open(target: Creds | { host: string; port: number }, options: RedisOptions = {}): Promise<Redis> {
  const common: RedisOptions = { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null, ...options };
  const redis = 'uri' in target ? new Redis(target.uri as string, common) : new Redis({ host: target.host, port: target.port, ...common });
  // A refused login closes the connection; the server's reason (WRONGPASS, ...) arrives as an error event.
  let reason: Error | undefined;
  redis.on('error', (error: Error) => {
    reason = error;
  });
  try {
    await redis.connect();
  } catch (error) {
    redis.disconnect();
    throw reason ?? error;
  }
  return redis;
}

async function withRedis<T>(credentials: Creds, use: (redis: Redis) => Promise<T>, options: RedisOptions = {}): Promise<T> {
  const redis = await open(credentials, options);
  try {
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

const client: EngineClient = {
  async write(credentials, key, value) {
    await withRedis(credentials, async (redis) => {
      expectOk(await redis.set(key, value));
    });
  },
  async read(credentials, key) {
    return withRedis(credentials, async (redis) => (await redis.get(key)) ?? undefined);
  },
  async login(credentials) {
    await withRedis(credentials, async (redis) => {
      if ((await redis.ping()) !== 'PONG') throw new Error('no PONG');
    });
  },
};

function expectOk(reply: unknown): void {
  if (reply !== 'OK') throw new Error(`expected OK, got ${String(reply)}`);
}

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

/** A field of INFO, read through a binding (INFO is allowed to bindings). */
async function info(credentials: Creds, field: string): Promise<string | undefined> {
  return withRedis(credentials, async (redis) => {
    const text = await redis.info();
    return new RegExp(`^${field}:(.*)$`, 'm').exec(text)?.[1]?.trim();
  });
}

test('the catalog offers redis with its tags, plans and parameters', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  const offering = catalog.body.services.find((service: any) => service.name === 'redis');
  t.truthy(offering, 'redis is in the catalog');
  t.is(offering.id, REDIS.service);
  t.deepEqual(offering.tags, ['redis', 'key-value']);
  t.true(offering.bindable);
  t.deepEqual(
    offering.plans.map((plan: any) => [plan.name, plan.id]),
    [
      ['small', REDIS.small],
      ['medium', REDIS.medium],
    ],
  );
  for (const plan of offering.plans) {
    t.deepEqual(plan.maintenance_info, { version: '7.0.2', description: 'Redis 7.0 on Debian bookworm, with backup and restore, TLS and engine stats' });
    const policy = plan.schemas.service_instance.update.parameters.properties.maxmemory_policy;
    t.is(policy.default, 'noeviction');
    t.true(policy.enum.includes('allkeys-lru'));
  }
});

test('redis lifecycle through bound credentials (ioredis)', async (t) => {
  await engineLifecycle(t, env, { serviceId: REDIS.service, planId: REDIS.small }, client, async ([a, b]) => {
    const host = env.config.advertisedHost;
    for (const c of [a, b]) {
      t.regex(c.username, /^u[a-z0-9]{15}$/);
      t.is(c.uri, `redis://${encodeURIComponent(c.username)}:${encodeURIComponent(c.password)}@${host}:${c.port}`);
      t.deepEqual(Object.keys(c).sort(), ['ca_certificate', 'host', 'hostname', 'password', 'port', 'rediss_uri', 'tls_port', 'uri', 'username']);
    }

    await withRedis(a, async (redis) => {
      t.is(await redis.call('ACL', 'WHOAMI'), a.username);
      // No server administration.
      for (const command of [
        ['CONFIG', 'GET', 'maxmemory'],
        ['CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru'],
        ['ACL', 'LIST'],
        ['ACL', 'SETUSER', a.username, '+@all'],
        ['ACL', 'DELUSER', b.username],
        ['SHUTDOWN', 'NOSAVE'],
        ['MODULE', 'LIST'],
        ['MONITOR'],
        ['CLIENT', 'LIST'],
        ['CLIENT', 'KILL', 'USER', b.username],
        ['SLOWLOG', 'GET'],
        ['BGREWRITEAOF'],
        ['REPLICAOF', '127.0.0.1', '1'],
        ['MIGRATE', '127.0.0.1', '1', 'k', '0', '1000'],
        ['RESTORE', 'k', '0', 'x'],
      ]) {
        await t.throwsAsync(() => redis.call(command[0], ...command.slice(1)), { message: /NOPERM/ }, command.join(' '));
      }
      await t.throwsAsync(() => redis.call('DEBUG', 'SLEEP', '0'), { message: /NOPERM|not allowed/ });
      // Lua cannot get around it either.
      await t.throwsAsync(() => redis.eval("return redis.call('CONFIG', 'GET', 'maxmemory')", 0), { message: /NOPERM|not allowed|permissions/ });

      // What applications need: data commands, transactions, scripting, INFO, KEYS, FLUSHDB in a database of their own.
      t.deepEqual(await redis.multi().incr('counter').incr('counter').exec(), [
        [null, 1],
        [null, 2],
      ]);
      t.is(await redis.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, 'counter', '10'), 12);
      t.regex(await redis.info('server'), /redis_version:7\.0\./);
      t.true((await redis.keys('*')).includes('counter'));
      await redis.del('counter');
    });
    await withRedis(
      b,
      async (redis) => {
        await redis.set('scratch', '1');
        t.deepEqual(await redis.keys('scratch'), ['scratch']);
        t.is(await redis.flushdb(), 'OK');
        t.is(await redis.dbsize(), 0);
      },
      { db: 3 },
    );

    // Pub/sub between two bindings.
    const subscriber = await open(b);
    try {
      const received = new Promise<string>((resolve) => subscriber.on('message', (_channel: string, message: string) => resolve(message)));
      await subscriber.subscribe('news');
      await withRedis(a, async (redis) => {
        t.is(await redis.publish('news', 'hello'), 1);
      });
      t.is(await received, 'hello');
    } finally {
      subscriber.disconnect();
    }

    // The default user is off: no connection without login (ioredis' HELLO is refused), no command, no
    // password-only AUTH, no AUTH as default.
    await t.throwsAsync(() => open({ host: a.host, port: a.port }), { message: /NOAUTH/ });
    await t.throwsAsync(() => open({ host: a.host, port: a.port }, { password: a.password }), { message: /WRONGPASS/ });
    const anonymous = await open({ host: a.host, port: a.port }, { protocol: 2, enableReadyCheck: false });
    try {
      await t.throwsAsync(() => anonymous.get('written-by-first'), { message: /NOAUTH/ });
      await t.throwsAsync(() => anonymous.call('AUTH', a.password), { message: /WRONGPASS/ });
      await t.throwsAsync(() => anonymous.call('AUTH', 'default', a.password), { message: /WRONGPASS/ });
      await t.throwsAsync(() => anonymous.call('AUTH', 'osb_admin', a.password), { message: /WRONGPASS/ });
      await t.throwsAsync(() => anonymous.get('written-by-first'), { message: /NOAUTH/ });
    } finally {
      anonymous.disconnect();
    }
  });
});

test('redis: ACL users and data survive a restart; unbind ends open connections; maxmemory_policy applies live', async (t) => {
  const { client: osb } = env;
  const id = uniqueId();
  const started = Date.now();
  const accepted = await osb.provision(id, provisionBody(REDIS.service, REDIS.small, { parameters: { maxmemory_policy: 'allkeys-lru' } }));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  t.is((await osb.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  t.log(`provisioned in ${Date.now() - started} ms`);

  const bindStarted = Date.now();
  const bound = await osb.bind(id, 'keeper', { service_id: REDIS.service, plan_id: REDIS.small });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  t.log(`bound in ${Date.now() - bindStarted} ms`);
  const keeper: Creds = bound.body.credentials;
  const doomed: Creds = (await osb.bind(id, 'doomed', { service_id: REDIS.service, plan_id: REDIS.small })).body.credentials;

  const { containers } = await brokerObjects(env.config.brokerId);
  const container = containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;
  const raw = await inspectRaw(container.name);
  t.deepEqual(raw.HostConfig.CapDrop, ['ALL']);
  t.is(raw.Config.User, 'redis');

  t.is(await info(keeper, 'maxmemory_policy'), 'allkeys-lru');
  t.is(await info(keeper, 'maxmemory'), String(128 * 1024 * 1024), 'half of the plan memory');
  await client.write(keeper, 'durable', 'yes');

  // Unbind ends the binding's open connections (here one blocked in BLPOP).
  const blocked = await open(doomed);
  const pending = blocked.blpop('never-filled', 30).then(
    () => 'answered',
    (error: Error) => `failed: ${error.message}`,
  );
  await new Promise((resolve) => setTimeout(resolve, 200));
  const unbound = await osb.unbind(id, 'doomed', REDIS.service, REDIS.small);
  t.is(unbound.status, 200);
  t.regex(await pending, /^failed: /);
  blocked.disconnect();
  await t.throwsAsync(() => client.login(doomed), { message: /WRONGPASS|NOAUTH/ });

  // A parameter update is applied without a restart.
  const patched = await osb.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: REDIS.service,
    parameters: { maxmemory_policy: 'volatile-ttl' },
  });
  t.is(patched.status, 202, JSON.stringify(patched.body));
  t.is((await osb.waitForInstance(id, patched.body.operation)).body.state, 'succeeded');
  const before = (await engine.inspectContainer(container.name))!.startedAt;
  t.is(await info(keeper, 'maxmemory_policy'), 'volatile-ttl');
  t.is((await engine.inspectContainer(container.name))!.startedAt, before, 'not restarted');

  // docker restart: the ACL file, the AOF and the settings are on the volume.
  await docker.getContainer(container.name).restart({ t: 10 });
  await waitForLogin(keeper);
  t.not((await engine.inspectContainer(container.name))!.startedAt, before, 'restarted');
  t.is(await client.read(keeper, 'durable'), 'yes', 'data kept (AOF)');
  t.is(await info(keeper, 'maxmemory_policy'), 'volatile-ttl', 'setting kept');
  await t.throwsAsync(() => client.login(doomed), { message: /WRONGPASS|NOAUTH/ }, 'the deleted user stays deleted');
  await t.throwsAsync(() => open({ host: keeper.host, port: keeper.port }), { message: /NOAUTH/ }, 'default stays off');

  // The scripts still work after the restart: a new binding.
  const late = await osb.bind(id, 'late', { service_id: REDIS.service, plan_id: REDIS.small });
  t.is(late.status, 201, JSON.stringify(late.body));
  t.is(await client.read(late.body.credentials, 'durable'), 'yes');

  const deleting = await osb.deprovision(id, REDIS.service, REDIS.small);
  t.is(deleting.status, 202);
  t.is((await osb.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');

  const logged = env.logs.join('');
  for (const secret of [keeper.password, doomed.password]) t.false(logged.includes(secret), 'no password in the broker logs');
});
