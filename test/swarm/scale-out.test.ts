// The broker in Swarm mode against a real three-node Swarm (Docker-in-Docker nodes on a bridge network of this
// machine; see test/helpers/swarm-cluster.ts). The broker runs as a process on this machine with DOCKER_HOST at the
// manager; instances are reached by the real clients at their nodes' addresses.
import test from 'ava';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import mqtt from 'mqtt';
import pg from 'pg';
import { loadCatalog } from '../../src/catalog/load.js';
import { imageTag } from '../../src/catalog/definition.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import path from 'node:path';
import { startTestRedis, uniqueId } from '../helpers/env.js';
import { provisionBody } from '../helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir, type SpawnedBroker } from '../helpers/spawn-broker.js';
import { startSwarmCluster, type SwarmCluster } from '../helpers/swarm-cluster.js';
import { waitUntil } from '../helpers/wait.js';

const OFFERINGS = {
  postgresql: { service: 'd0fc228f-54d1-4bed-8dd0-38c7a33c4500', plan: 'fdc3b78d-156f-4bac-aba4-242250cc5840' },
  redis: { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', plan: '92776b7b-46d1-4950-91fb-9b675ca53968' },
  mariadb: { service: '0f5e3bfd-1d78-49ad-9f16-78ce4c376b52', plan: 'c65006c3-2c84-4a77-93b1-c14c76cd9075' },
  mqtt: { service: '6d6a455a-02d9-43ec-884b-bb6c5e827a77', plan: '68f7c072-2a32-4b72-b3f3-bc56f5f9c620' },
} as const;
type OfferingName = keyof typeof OFFERINGS;

interface Placed {
  id: string;
  offering: OfferingName;
  credentials: Record<string, any>;
}

let cluster: SwarmCluster;
let broker: SpawnedBroker;
let redis: { url: string; stop(): Promise<void> };
let state: { dir: string; remove(): void };
const brokerId = `sw${uniqueId('').slice(1, 9)}`;
const placed: Placed[] = [];
let brokerEnv: Record<string, string>;
let redisImage = '';

test.before(async (t) => {
  cluster = await startSwarmCluster({ name: 'osb-scale', nodes: 3, heartbeatSeconds: 2, log: (line) => t.log(line) });
  t.log(`cluster ready in ${cluster.startup.ms.total} ms (reused: ${cluster.startup.reused})`);
  // The images are built on this machine (npm test builds them first); the broker finds them on the manager and
  // copies them to the workers itself.
  const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), process.env.BROKER_IMAGE_PREFIX || 'osb-broker/');
  for (const name of Object.keys(OFFERINGS)) {
    const definition = definitions.find((candidate) => candidate.offering.name === name)!;
    const [load] = await cluster.loadImage(imageTag(definition), [cluster.nodes[0]!.name]);
    t.log(`${imageTag(definition)} on the manager: ${load!.skipped ? 'already there' : `${load!.bytes} bytes in ${load!.ms} ms`}`);
    if (name === 'redis') redisImage = imageTag(definition);
  }
  // The workers keep images between runs (their volumes are a cache): take Redis's away, so the broker must copy it.
  for (const node of cluster.nodes.slice(1))
    await node.engine
      .getImage(redisImage)
      .remove({ force: true })
      .catch(() => undefined);
  redis = await startTestRedis();
  state = tempStateDir();
  brokerEnv = {
    DOCKER_HOST: cluster.managerUrl,
    BROKER_ORCHESTRATOR: 'swarm',
    BROKER_ID: brokerId,
    REDIS_URL: redis.url,
    BROKER_PASSWORD: 'swarm-test-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    BROKER_STATE_DIR: state.dir,
    BROKER_PORT_RANGE: '48000-48099',
    BROKER_RECONCILE_SECONDS: '2',
    LOG_LEVEL: 'info',
  };
  broker = await spawnBroker({ ...brokerEnv, PORT: String(await freePort()) });
});

test.after.always(async () => {
  await broker?.kill('SIGTERM');
  await killAllBrokers();
  await cluster?.remove();
  await redis?.stop();
  state?.remove();
});

const nodeIps = () => cluster.nodes.map((node) => node.ip);

async function provision(offering: OfferingName): Promise<string> {
  const id = uniqueId('sw');
  const { service, plan } = OFFERINGS[offering];
  const accepted = await broker.client.provision(id, provisionBody(service, plan));
  if (accepted.status !== 202) throw new Error(`provision answered ${accepted.status}: ${JSON.stringify(accepted.body)}`);
  const done = await broker.client.waitForInstance(id, accepted.body.operation, 300_000);
  if (done.body.state !== 'succeeded') throw new Error(`provision of ${offering} ${done.body.state}: ${done.body.description}`);
  return id;
}

async function bind(offering: OfferingName, id: string, bindingId = 'app'): Promise<Record<string, any>> {
  const { service, plan } = OFFERINGS[offering];
  const reply = await broker.client.bind(id, bindingId, { service_id: service, plan_id: plan, bind_resource: { app_guid: 'app' } });
  if (reply.status !== 201) throw new Error(`bind answered ${reply.status}: ${JSON.stringify(reply.body)}`);
  return reply.body.credentials;
}

/** Writes `value` through the instance's real client and reads it back; throws when the credentials do not work. */
async function roundTrip(offering: OfferingName, credentials: Record<string, any>, value: string): Promise<string> {
  switch (offering) {
    case 'postgresql': {
      const client = new pg.Client({ connectionString: credentials.uri, connectionTimeoutMillis: 5000 });
      await client.connect();
      try {
        await client.query('CREATE TABLE IF NOT EXISTS notes (value text)');
        await client.query('INSERT INTO notes VALUES ($1)', [value]);
        const { rows } = await client.query<{ value: string }>('SELECT value FROM notes WHERE value = $1', [value]);
        return rows[0]!.value;
      } finally {
        await client.end();
      }
    }
    case 'redis': {
      const client = new Redis(credentials.uri, { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
      client.on('error', () => {}); // connect() rejects with it
      await client.connect();
      try {
        await client.set(`note:${value}`, value);
        return (await client.get(`note:${value}`))!;
      } finally {
        client.disconnect();
      }
    }
    case 'mariadb': {
      const client = await mysql.createConnection({ uri: credentials.uri, connectTimeout: 5000 });
      try {
        await client.query('CREATE TABLE IF NOT EXISTS notes (value varchar(200))');
        await client.query('INSERT INTO notes VALUES (?)', [value]);
        const [rows] = await client.query('SELECT value FROM notes WHERE value = ?', [value]);
        return (rows as Array<{ value: string }>)[0]!.value;
      } finally {
        await client.end();
      }
    }
    case 'mqtt': {
      const client = await mqtt.connectAsync(credentials.uri, { reconnectPeriod: 0, connectTimeout: 5000 });
      try {
        const received = new Promise<string>((resolve) => client.on('message', (_topic, payload) => resolve(payload.toString())));
        await client.subscribeAsync(`notes/${value}`, { qos: 1 });
        await client.publishAsync(`notes/${value}`, value, { qos: 1 });
        return await received;
      } finally {
        await client.endAsync();
      }
    }
  }
}

/** Whether a value written earlier through roundTrip is still stored (PostgreSQL, Redis and MariaDB keep data). */
async function stillHas(offering: OfferingName, credentials: Record<string, any>, value: string): Promise<boolean> {
  if (offering === 'postgresql') {
    const client = new pg.Client({ connectionString: credentials.uri, connectionTimeoutMillis: 5000 });
    await client.connect();
    try {
      return (await client.query('SELECT 1 FROM notes WHERE value = $1', [value])).rowCount === 1;
    } finally {
      await client.end();
    }
  }
  if (offering === 'redis') {
    const client = new Redis(credentials.uri, { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {}); // connect() rejects with it
    await client.connect();
    try {
      return (await client.get(`note:${value}`)) === value;
    } finally {
      client.disconnect();
    }
  }
  if (offering === 'mariadb') {
    const client = await mysql.createConnection({ uri: credentials.uri, connectTimeout: 5000 });
    try {
      const [rows] = await client.query('SELECT value FROM notes WHERE value = ?', [value]);
      return (rows as unknown[]).length === 1;
    } finally {
      await client.end();
    }
  }
  return true;
}

/** The broker's Swarm services, by the node each is pinned to. */
async function servicesByNode(): Promise<Map<string, string[]>> {
  const services = await cluster.manager.listServices({ filters: { label: [`io.osb-broker.broker=${brokerId}`] } });
  const byNode = new Map<string, string[]>();
  for (const service of services as any[]) {
    const constraint = (service.Spec.TaskTemplate.Placement?.Constraints ?? [])[0] as string;
    const node = constraint.replace(/^node\.id\s*==\s*/, '');
    byNode.set(node, [...(byNode.get(node) ?? []), service.Spec.Labels['io.osb-broker.instance']]);
  }
  return byNode;
}

const listed = async (id: string) => {
  const reply = await broker.client.request('GET', '/broker/v1/instances', undefined, { version: null });
  return (reply.body.instances as any[]).find((instance) => instance.id === id);
};

test.serial('six instances of mixed offerings spread over three nodes, each used through its node address', async (t) => {
  const mix: OfferingName[] = ['postgresql', 'postgresql', 'redis', 'redis', 'mariadb', 'mqtt'];
  const started = Date.now();
  const ids = await Promise.all(mix.map((offering) => provision(offering)));
  t.log(`6 instances provisioned concurrently in ${Date.now() - started} ms (images copied to the workers on first use)`);
  for (const [index, id] of ids.entries()) {
    const offering = mix[index]!;
    const credentials = await bind(offering, id);
    t.true(nodeIps().includes(credentials.host), `${offering} is advertised at a node address (${credentials.host})`);
    t.is(await roundTrip(offering, credentials, `hello-${index}`), `hello-${index}`);
    placed.push({ id, offering, credentials });
  }
  // The broker copied Redis's image to the nodes that run a Redis instance: the very image of the manager.
  const managerImage = (await cluster.manager.getImage(redisImage).inspect()).Id;
  for (const instance of placed.filter((candidate) => candidate.offering === 'redis')) {
    const node = cluster.nodes.find((candidate) => candidate.ip === instance.credentials.host)!;
    t.is((await node.engine.getImage(redisImage).inspect()).Id, managerImage, `${redisImage} on ${node.name}`);
  }
  const hosts = new Set(placed.map((instance) => instance.credentials.host));
  t.is(hosts.size, 3, 'every node holds instances');
  const byNode = await servicesByNode();
  t.deepEqual([...byNode.keys()].sort(), cluster.nodes.map((node) => node.swarmNodeId).sort());
  for (const instance of placed) {
    const node = cluster.nodes.find((candidate) => candidate.ip === instance.credentials.host)!;
    t.true(byNode.get(node.swarmNodeId)!.includes(instance.id), 'the service is pinned to the node the credentials name');
  }
});

test.serial('the dashboard of an instance on a worker shows its processes and logs', async (t) => {
  const worker = cluster.nodes[1]!;
  const instance =
    placed.find((candidate) => candidate.credentials.host === worker.ip && candidate.offering === 'postgresql') ??
    placed.find((candidate) => candidate.credentials.host === worker.ip)!;
  const fetched = await broker.client.request('GET', `/v2/service_instances/${instance.id}`);
  const link = fetched.body.dashboard_url as string;
  const entry = await fetch(link, { redirect: 'manual' });
  const cookie = (entry.headers.get('set-cookie') ?? '').split(';')[0]!;
  t.regex(cookie, /^osb_dashboard=/);
  const api = (what: string) =>
    fetch(`${broker.url}/dashboard/instances/${instance.id}/api/${what}`, { headers: { cookie } }).then((r) => r.json() as Promise<any>);
  const top = await api('top');
  t.true(top.processes.length > 0, `processes of the ${instance.offering} container on ${worker.name}`);
  t.true(top.titles.includes('PID'));
  const logs = await api('logs?tail=50');
  t.true(logs.lines.length > 0, 'log lines of the container on the worker');
  const details = await api('details');
  // Every published port is on the worker (an offering with extra ports, such as Redis's TLS port, shows more than one).
  t.true(details.endpoints.includes(`${worker.ip}:${instance.credentials.port}`), details.endpoints.join(' '));
  t.true(
    details.endpoints.every((endpoint: string) => endpoint.startsWith(`${worker.ip}:`)),
    details.endpoints.join(' '),
  );
  t.true(details.container.running);
});

test.serial('a drained node gets no new instances; its own come back with their data when it is active again', async (t) => {
  const drained = cluster.nodes[2]!;
  const mine = placed.filter((instance) => instance.credentials.host === drained.ip);
  const before = mine.find((instance) => instance.offering !== 'mqtt') ?? mine[0]!;
  await roundTrip(before.offering, before.credentials, 'before-drain');
  await cluster.drain(drained.name);
  try {
    const ids = await Promise.all([provision('redis'), provision('redis')]);
    for (const id of ids) {
      const credentials = await bind('redis', id);
      t.not(credentials.host, drained.ip, 'placed elsewhere');
      t.is(await roundTrip('redis', credentials, 'not-on-the-drained-node'), 'not-on-the-drained-node');
      placed.push({ id, offering: 'redis', credentials });
    }
  } finally {
    await cluster.activate(drained.name);
  }
  // Swarm stopped the drained node's tasks (they cannot move: they are pinned to their volume) and starts them again.
  await waitUntil(
    `${before.offering} on ${drained.name} to answer again`,
    () => roundTrip(before.offering, before.credentials, 'after-drain').catch(() => undefined),
    120_000,
    1000,
  );
  t.true(await stillHas(before.offering, before.credentials, 'before-drain'), 'the data written before the drain is still there');
});

test.serial(
  "a node's engine stopped: its instances are reported unavailable and refuse operations clearly, the others work; all back after it restarts",
  async (t) => {
    const failing = cluster.nodes[1]!;
    const onFailing = placed.filter((instance) => instance.credentials.host === failing.ip);
    const elsewhere = placed.filter((instance) => instance.credentials.host !== failing.ip);
    t.true(onFailing.length > 0 && elsewhere.length > 0);
    const victim = onFailing[0]!;

    await cluster.stopNodeEngine(failing.name, 'kill');
    const downMs = await cluster.waitForNodeState(failing.name, 'down', 60_000);
    t.log(`Swarm saw ${failing.name} down after ${downMs} ms`);

    // Waited for by its cause: a report left from the drain above (the task restarting) may still stand for a moment.
    const health = await waitUntil(
      `the listing to report ${victim.id} down with its node`,
      async () => {
        const entry = await listed(victim.id);
        return entry?.health?.state === 'down' && entry.health.cause === 'node-down' ? entry.health : undefined;
      },
      60_000,
      500,
    );
    t.is(health.cause, 'node-down');
    t.regex(health.reason, new RegExp(`node ${failing.name} is down`));

    // A bind on it fails with a description that names the node.
    const { service, plan } = OFFERINGS[victim.offering];
    const accepted = await broker.client.bind(victim.id, 'during-outage', { service_id: service, plan_id: plan }, true);
    if (accepted.status === 202) {
      const finished = await broker.client.waitForBinding(victim.id, 'during-outage', 120_000);
      t.is(finished.body.state, 'failed');
      t.regex(finished.body.description, /node/);
    } else {
      t.true(accepted.status >= 400, JSON.stringify(accepted.body));
    }

    // The other nodes' instances are unaffected.
    for (const instance of elsewhere) t.is(await roundTrip(instance.offering, instance.credentials, 'during-outage'), 'during-outage');
    const other = elsewhere[0]!;
    const rebind = await bind(other.offering, other.id, 'during-outage');
    t.is(await roundTrip(other.offering, rebind, 'bound-during-outage'), 'bound-during-outage');

    const upMs = await cluster.startNodeEngine(failing.name);
    t.log(`${failing.name} ready again after ${upMs} ms`);
    for (const instance of onFailing) {
      const answer = await waitUntil(
        `${instance.offering} on ${failing.name} to answer again`,
        () => roundTrip(instance.offering, instance.credentials, 'after-outage').catch(() => undefined),
        180_000,
        1000,
      );
      t.is(answer, 'after-outage', `${instance.offering} on ${failing.name} works again`);
    }
    const back = await waitUntil(
      `the listing to report ${victim.id} running again`,
      async () => {
        const entry = await listed(victim.id);
        return entry && entry.health?.state !== 'down' ? entry : undefined;
      },
      60_000,
      500,
    );
    t.is(back.state, 'ready');
    t.not(back.health?.state, 'down');
  },
);

test.serial('start-up recovery reports the services and volumes no instance owns, on every node', async (t) => {
  const worker = cluster.nodes[2]!;
  const labels = { 'io.osb-broker.broker': brokerId, 'io.osb-broker.role': 'instance', 'io.osb-broker.instance': 'ghost-instance' };
  const volume = `osb-${brokerId}-ghost-volume`;
  await worker.engine.createVolume({ Name: volume, Labels: labels });
  const service = `osb-${brokerId}-ghost-service`;
  await cluster.manager.createService({
    Name: service,
    Labels: labels,
    TaskTemplate: { ContainerSpec: { Image: 'osb-broker/redis:7.0.2' }, Placement: { Constraints: [`node.id==${cluster.nodes[0]!.swarmNodeId}`] } },
    Mode: { Replicated: { Replicas: 0 } },
  });
  // A second process of the same broker, as an operator would start one: its recovery looks at every node.
  const second = await spawnBroker({ ...brokerEnv, PORT: String(await freePort()) });
  try {
    const report = await second.waitForLog((record) => record.msg === 'recovery done', 60_000);
    t.deepEqual(report.orphanVolumes, [volume]);
    t.deepEqual(report.orphanContainers, [service]);
    t.is(report.removedOrphans, false);
  } finally {
    await second.kill('SIGTERM');
    await cluster.manager.getService(service).remove();
    await worker.engine.getVolume(volume).remove();
  }
});

test.serial('deprovisioning everything leaves no service, container, volume or port reservation on any node', async (t) => {
  await Promise.all(
    placed.map(async (instance) => {
      const { service, plan } = OFFERINGS[instance.offering];
      const reply = await broker.client.deprovision(instance.id, service, plan);
      t.is(reply.status, 202, JSON.stringify(reply.body));
      const done = await broker.client.waitForInstance(instance.id, reply.body.operation, 180_000);
      t.is(done.body.state, 'succeeded', done.body.description);
    }),
  );
  const label = `io.osb-broker.broker=${brokerId}`;
  t.deepEqual(await cluster.manager.listServices({ filters: { label: [label] } }), []);
  for (const node of cluster.nodes) {
    t.deepEqual(await node.engine.listContainers({ all: true, filters: { label: [label] } }), [], `no container on ${node.name}`);
    t.deepEqual((await node.engine.listVolumes({ filters: { label: [label] } })).Volumes ?? [], [], `no volume on ${node.name}`);
  }
  const store = new Redis(redis.url);
  try {
    t.deepEqual(await store.keys(`osb:${brokerId}:port*`), []);
  } finally {
    store.disconnect();
  }
});
