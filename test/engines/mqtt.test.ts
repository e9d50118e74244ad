import test from 'ava';
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { engineLifecycle, type Creds, type EngineClient } from '../helpers/engine-lifecycle.js';
import { brokerObjects, engine, startTestBroker, type TestBroker } from '../helpers/env.js';

const MQTT = {
  service: '6d6a455a-02d9-43ec-884b-bb6c5e827a77',
  small: '68f7c072-2a32-4b72-b3f3-bc56f5f9c620',
  medium: 'de90091b-e386-456f-a499-04243ba3b44a',
};

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(13);
});
test.after.always(async () => {
  await env?.stop();
});

/**
 * Connects and resolves on a successful CONNACK. A refused CONNACK, a refused TCP connection or a connection closed
 * before CONNACK rejects. Never reconnects (reconnectPeriod 0), so a refusal ends the client instead of retrying.
 */
function open(uri: string, options: IClientOptions = {}): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(uri, {
      clientId: `osb-test-${randomBytes(4).toString('hex')}`,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      clean: true,
      ...options,
    });
    const fail = (error: Error) => {
      client.removeAllListeners('connect');
      client.end(true);
      reject(error);
    };
    client.once('connect', () => {
      client.removeListener('error', fail);
      client.removeListener('close', closed);
      client.on('error', () => {});
      resolve(client);
    });
    const closed = () => fail(new Error('connection closed before CONNACK'));
    client.once('error', fail);
    client.once('close', closed);
  });
}

/** Every published message of a test carries its key in its topic. */
const topic = (key: string) => `osb/${key}`;

const mqttClient: EngineClient = {
  async write(credentials, key, value) {
    const client = await open(credentials.uri);
    try {
      await client.publishAsync(topic(key), value, { qos: 1, retain: true });
    } finally {
      await client.endAsync();
    }
  },
  async read(credentials, key) {
    const client = await open(credentials.uri);
    try {
      const received = new Promise<string | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), 5000);
        client.on('message', (name, payload) => {
          if (name !== topic(key)) return;
          clearTimeout(timer);
          resolve(payload.toString());
        });
      });
      const granted = await client.subscribeAsync(topic(key), { qos: 1 });
      if (granted[0]?.qos === 128) throw new Error(`subscription to ${topic(key)} refused`);
      return await received;
    } finally {
      await client.endAsync();
    }
  },
  async login(credentials) {
    const client = await open(credentials.uri);
    await client.endAsync();
  },
};

test('the catalog offers mqtt', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  const offering = catalog.body.services.find((service: any) => service.id === MQTT.service);
  t.truthy(offering, 'the mqtt offering is listed');
  t.is(offering.name, 'mqtt');
  t.deepEqual(offering.tags, ['mqtt', 'mosquitto']);
  t.true(offering.bindable);
  t.deepEqual(
    offering.plans.map((plan: any) => [plan.id, plan.name]),
    [
      [MQTT.small, 'small'],
      [MQTT.medium, 'medium'],
    ],
  );
  for (const plan of offering.plans) {
    t.deepEqual(plan.maintenance_info, {
      version: '2.0.13',
      description: 'Eclipse Mosquitto 2.0 on Debian bookworm, with backup and restore, TLS and engine stats',
    });
    t.is(plan.schemas.service_instance.create.parameters.properties.log_subscriptions.default, false);
  }
});

test('MQTT lifecycle through bound credentials', async (t) => {
  const { config } = env;
  let first: Creds | undefined;
  let second: Creds | undefined;
  let held: MqttClient | undefined;
  let heldClosedAt: number | undefined;
  let readAfterUnbindAt: number | undefined;
  let extraChecksDone = false;

  const client: EngineClient = {
    ...mqttClient,
    async read(credentials, key) {
      // The lifecycle reads once more after the unbind and before the deprovision.
      if (extraChecksDone) readAfterUnbindAt ??= Date.now();
      return mqttClient.read(credentials, key);
    },
  };

  await engineLifecycle(t, env, { serviceId: MQTT.service, planId: MQTT.small }, client, async ([a, b]) => {
    first = a;
    second = b;
    const enc = encodeURIComponent;
    t.is(a.username.length, 16);
    t.is(a.uri, `mqtt://${enc(a.username)}:${enc(a.password)}@${config.advertisedHost}:${a.port}`);
    t.is(b.uri, `mqtt://${enc(b.username)}:${enc(b.password)}@${config.advertisedHost}:${b.port}`);
    t.is(b.port, a.port);

    // Anonymous clients and wrong passwords are refused with "not authorized", and the client gives up.
    const anonymous = `mqtt://${config.advertisedHost}:${a.port}`;
    await t.throwsAsync(() => open(anonymous), { message: /not authori[sz]ed/i });
    await t.throwsAsync(() => open(anonymous, { protocolVersion: 5 }), { message: /not authori[sz]ed/i });
    const wrong = `mqtt://${enc(a.username)}:wrong-password@${config.advertisedHost}:${a.port}`;
    await t.throwsAsync(() => open(wrong), { message: /not authori[sz]ed|bad user ?name or password/i });
    await t.throwsAsync(() => open(`mqtt://${config.advertisedHost}:${a.port}`, { username: 'osb_admin', password: 'guess' }), {
      message: /not authori[sz]ed|bad user ?name or password/i,
    });

    // A binding may not read the broker's $SYS topics (only the instance admin may).
    const watcher = await open(a.uri);
    const sys: string[] = [];
    watcher.on('message', (name) => sys.push(name));
    // Mosquitto 2.0 grants the subscription but its ACL holds back every message; the retained
    // $SYS/broker/version would otherwise arrive at once (the check script receives it as the admin).
    await watcher.subscribeAsync('$SYS/broker/version', { qos: 0 });
    await watcher.subscribeAsync(topic('written-by-first'), { qos: 0 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    t.deepEqual(sys, [topic('written-by-first')], 'only the instance topic is delivered, no $SYS topic');
    await watcher.endAsync();

    // Retained messages are visible to a binding that subscribes later, QoS 1 delivery keeps the payload.
    t.is(await mqttClient.read(b, 'written-by-first'), 'one');

    // An update of the logging parameters applies live (SIGHUP): subscriptions are logged from then on only.
    const [container] = (await brokerObjects(config.brokerId)).containers;
    const instanceId = container!.labels['io.osb-broker.instance']!;
    const subscribe = async (name: string) => {
      const subscriber = await open(b.uri);
      await subscriber.subscribeAsync(name, { qos: 0 });
      await subscriber.endAsync();
    };
    const logged = async () => (await engine.logs(container!.name, 500)).map((line) => line.text).join('\n');
    const before = (await engine.inspectContainer(container!.name))!;
    await subscribe(topic('before-update'));
    const updating = await env.client.request('PATCH', `/v2/service_instances/${instanceId}?accepts_incomplete=true`, {
      service_id: MQTT.service,
      parameters: { log_subscriptions: true },
    });
    t.true([200, 202].includes(updating.status), JSON.stringify(updating.body));
    if (updating.status === 202) t.is((await env.client.waitForInstance(instanceId, updating.body.operation)).body.state, 'succeeded');
    await subscribe(topic('after-update'));
    // The server writes the line a moment after the subscription; give it a few seconds on a busy machine.
    let lines = await logged();
    for (let attempt = 0; attempt < 50 && !lines.includes(` 0 ${topic('after-update')}`); attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      lines = await logged();
    }
    t.false(lines.includes(topic('before-update')), 'subscriptions are not logged by default');
    t.true(lines.includes(` 0 ${topic('after-update')}`), 'the subscription after the update is logged');
    const after = (await engine.inspectContainer(container!.name))!;
    t.is(after.restartCount, before.restartCount, 'no restart');
    t.is(after.startedAt, before.startedAt, 'the same run of the server');

    // A client of the first binding stays connected across its unbind: mosquitto must drop it on the reload.
    held = await open(a.uri);
    held.on('close', () => (heldClosedAt ??= Date.now()));
    t.true(held.connected);
    extraChecksDone = true;
  });

  t.truthy(readAfterUnbindAt, 'the lifecycle read after the unbind');
  t.truthy(heldClosedAt, 'the connection of the unbound user was closed');
  t.true(heldClosedAt! <= readAfterUnbindAt!, 'it was closed by the unbind, before the deprovision');
  held?.end(true);

  // No binding secret reached the logs.
  const logged = env.logs.join('');
  for (const secret of [first!.password, second!.password]) t.false(logged.includes(secret));
});
