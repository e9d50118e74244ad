import test from 'ava';
import amqp from 'amqplib';
import { engineLifecycle, type Creds, type EngineClient } from '../helpers/engine-lifecycle.js';
import { brokerObjects, engine, redisKeys, startTestBroker, type TestBroker } from '../helpers/env.js';

const RABBITMQ = {
  service: '6b592c13-3465-4be4-a448-7c14258b034c',
  small: 'bf8e1ee2-edda-44a2-ab3d-ba531124d51b',
  medium: 'a2a6ee8f-6901-46aa-885b-dec327aeac0b',
};
// Needs percent-encoding in the uri ("/" and " "), and is not the default vhost "/".
const VHOST = 'orders/eu 1';

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(12);
});
test.after.always(async () => {
  await env?.stop();
});

/** A connection whose server-side errors reject the pending operation instead of being thrown as 'error' events. */
async function connect(uri: string) {
  const connection = await amqp.connect(uri, { timeout: 10_000 });
  connection.on('error', () => {});
  return connection;
}

/** AMQP 0-9-1 through amqplib: one durable queue per key on the default exchange, persistent messages. */
const rabbitmq: EngineClient = {
  async write(credentials, key, value) {
    const connection = await connect(credentials.uri);
    try {
      const channel = await connection.createConfirmChannel();
      channel.on('error', () => {});
      await channel.assertQueue(key, { durable: true });
      channel.publish('', key, Buffer.from(value), { persistent: true });
      await channel.waitForConfirms();
    } finally {
      await connection.close();
    }
  },
  async read(credentials, key) {
    const connection = await connect(credentials.uri);
    try {
      const channel = await connection.createChannel();
      channel.on('error', () => {});
      const message = await channel.get(key, { noAck: false });
      if (!message) return undefined;
      // Put it back: the lifecycle reads the same key again later.
      channel.nack(message, false, true);
      return message.content.toString();
    } finally {
      await connection.close();
    }
  },
  async login(credentials) {
    const connection = await connect(credentials.uri);
    await connection.close();
  },
};

/** GET on the management API with the user and password that the URI carries (fetch refuses URLs with credentials). */
async function apiGet(apiUri: string, path: string): Promise<{ status: number; body: any }> {
  const url = new URL(apiUri);
  const auth = Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64');
  url.username = '';
  url.password = '';
  const response = await fetch(new URL(path, url), { headers: { Authorization: `Basic ${auth}` } });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // keep the text
  }
  return { status: response.status, body };
}

test('the catalog offers rabbitmq', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  const offering = catalog.body.services.find((service: any) => service.id === RABBITMQ.service);
  t.truthy(offering, 'the rabbitmq offering is listed');
  t.is(offering.name, 'rabbitmq');
  t.deepEqual(offering.tags, ['rabbitmq', 'amqp']);
  t.true(offering.bindable);
  t.deepEqual(
    offering.plans.map((plan: any) => [plan.id, plan.name]),
    [
      [RABBITMQ.small, 'small'],
      [RABBITMQ.medium, 'medium'],
    ],
  );
  for (const plan of offering.plans) {
    t.deepEqual(plan.maintenance_info, {
      version: '3.10.10',
      description: 'RabbitMQ 3.10 with the management plugin on Debian bookworm, with backup and restore, TLS and engine stats',
    });
    t.is(plan.limits, undefined, 'limits stay inside the broker');
    t.is(plan.schemas.service_instance.create.parameters.properties.vhost.default, 'app');
  }
});

test('RabbitMQ lifecycle through bound credentials', async (t) => {
  const { config } = env;
  let held: amqp.ChannelModel | undefined;
  let heldClosed: Promise<string> | undefined;
  let first: Creds | undefined;
  let second: Creds | undefined;
  let managementPort = 0;

  await engineLifecycle(t, env, { serviceId: RABBITMQ.service, planId: RABBITMQ.small, parameters: { vhost: VHOST } }, rabbitmq, async ([a, b]) => {
    first = a;
    second = b;
    // Credential shape: percent-encoded user, password and vhost; numeric port; the management API's own port.
    const enc = encodeURIComponent;
    t.is(a.vhost, VHOST);
    t.is(a.username.length, 16);
    t.is(a.uri, `amqp://${enc(a.username)}:${enc(a.password)}@${config.advertisedHost}:${a.port}/orders%2Feu%201`);
    const api = new URL(a.http_api_uri);
    managementPort = Number(api.port);
    t.is(a.http_api_uri, `http://${enc(a.username)}:${enc(a.password)}@${config.advertisedHost}:${managementPort}/api/`);
    t.not(managementPort, a.port);
    t.true(managementPort >= config.portRange.first && managementPort <= config.portRange.last, 'the management port is published from the broker range');
    t.is(b.http_api_uri, `http://${enc(b.username)}:${enc(b.password)}@${config.advertisedHost}:${managementPort}/api/`);

    // The binding's user has the "management" tag only: the HTTP API works for it, limited to the instance vhost.
    const whoami = await apiGet(a.http_api_uri, 'whoami');
    t.is(whoami.status, 200, JSON.stringify(whoami.body));
    t.deepEqual(whoami.body, { name: a.username, tags: ['management'] });
    const vhosts = await apiGet(a.http_api_uri, 'vhosts');
    t.is(vhosts.status, 200);
    t.deepEqual(
      vhosts.body.map((vhost: any) => vhost.name),
      [VHOST],
      'the binding sees only the instance vhost',
    );
    const queue = await apiGet(a.http_api_uri, `queues/${enc(VHOST)}/written-by-first`);
    t.is(queue.status, 200, JSON.stringify(queue.body));
    t.is(queue.body.durable, true);
    t.is((await apiGet(a.http_api_uri, 'users')).status, 401, 'a binding cannot administer users');
    t.is((await apiGet(b.http_api_uri, `queues/${enc('/')}`)).status, 401, 'nor look into the default vhost');
    const wrong = await apiGet(a.http_api_uri.replace(enc(a.password), 'wrong'), 'whoami');
    t.is(wrong.status, 401);

    // A binding's user cannot open the default vhost "/" over AMQP: the login itself succeeds, then the server
    // answers connection.open with connection.close (NOT_ALLOWED; amqplib does not pass the reason on).
    const defaultVhost = `amqp://${enc(a.username)}:${enc(a.password)}@${config.advertisedHost}:${a.port}/%2F`;
    await t.throwsAsync(() => rabbitmq.login({ uri: defaultVhost }), { message: /Expected ConnectionOpenOk; got <ConnectionClose/ });
    // Nor can the default guest user log in.
    await t.throwsAsync(() => rabbitmq.login({ uri: `amqp://guest:guest@${config.advertisedHost}:${a.port}/%2F` }), { message: /ACCESS.REFUSED/i });

    // Users in the node: the admin and one per binding; "guest" is gone.
    const [container] = (await brokerObjects(config.brokerId)).containers;
    const listed = await engine.exec(container!.name, ['rabbitmqctl', '-q', 'list_users', '--formatter', 'json'], { user: 'rabbitmq', timeoutMs: 30_000 });
    t.is(listed.exitCode, 0, listed.stderr);
    const users = (JSON.parse(listed.stdout) as Array<{ user: string; tags: string[] | string }>)
      .map(({ user, tags }) => [user, Array.isArray(tags) ? tags.join(',') : tags] as const)
      .sort(([x], [y]) => x.localeCompare(y));
    t.deepEqual(users, [['osb_admin', 'administrator'], ...[a.username, b.username].sort().map((name) => [name, 'management'] as const)]);

    // An update of max_queues applies live as a vhost limit: the instance has two queues, a third is refused.
    const instanceId = container!.labels['io.osb-broker.instance']!;
    const update = async (parameters: Record<string, unknown>) => {
      const reply = await env.client.request('PATCH', `/v2/service_instances/${instanceId}?accepts_incomplete=true`, {
        service_id: RABBITMQ.service,
        parameters,
      });
      t.true([200, 202].includes(reply.status), JSON.stringify(reply.body));
      if (reply.status === 202) t.is((await env.client.waitForInstance(instanceId, reply.body.operation)).body.state, 'succeeded');
    };
    await update({ max_queues: 2 });
    await t.throwsAsync(() => rabbitmq.write(b, 'one-too-many', 'x'), { message: /PRECONDITION.FAILED.*queue limit/i });
    await update({ max_queues: -1 });
    await rabbitmq.write(b, 'no-longer-too-many', 'x');

    // A connection of the first binding stays open across its unbind: the broker must close it.
    held = await connect(a.uri);
    heldClosed = new Promise((resolve) => {
      let reason = '';
      held!.on('error', (error: Error) => (reason = error.message));
      held!.on('close', (error?: Error) => resolve(error?.message || reason || 'closed without error'));
    });
    const channel = await held.createChannel();
    t.is((await channel.checkQueue('written-by-first')).messageCount, 1);
  });

  t.truthy(heldClosed, 'the lifecycle reached the extra checks');
  const reason = await Promise.race([heldClosed!, new Promise<string>((resolve) => setTimeout(() => resolve('still open'), 5000))]);
  // Closed by the unbind (the node closes a deleted user's connections; the unbind script also closes any left
  // through the management API), not by the later deprovision ("... with reason 'shutdown'").
  t.regex(reason, /CONNECTION.FORCED - (user '\w+' is deleted|Closed via management plugin)/, 'unbind closed the open connection');
  await held?.close().catch(() => {});

  // No reservation is left for the management port either; no binding secret reached the logs.
  const ports = await redisKeys(env.redisUrl, `osb:${config.brokerId}:port:*`);
  t.deepEqual(
    ports.filter((key) => key.endsWith(`:${managementPort}`)),
    [],
  );
  const logged = env.logs.join('');
  for (const secret of [first!.password, second!.password]) t.false(logged.includes(secret));
});
