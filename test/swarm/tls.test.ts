// TLS of instances on Docker Swarm (port block 56), against a real two-node Swarm (Docker-in-Docker; see
// test/helpers/swarm-cluster.ts) with the broker as a process: a Redis instance on the worker gets its certificate and
// key as Swarm secrets, ioredis verifies chain and name (the worker's address) over rediss://, another CA is refused,
// require_tls closes the plain port there, a task Swarm restarts on its own keeps serving the same certificate, a
// short-lived certificate is renewed by a new task with new secrets, a broker killed (kill -9) mid-renewal has the
// next process finish it (the old secrets removed, the task not replaced again), and a renewal runs as an instance
// operation: a bind meanwhile waits for its end, a deprovision during it stops it and leaves no secret, container or
// volume.
import test from 'ava';
import type Docker from 'dockerode';
import type { ConnectionOptions } from 'node:tls';
import path from 'node:path';
import { Redis } from 'ioredis';
import { loadCatalog } from '../../src/catalog/load.js';
import { imageTag } from '../../src/catalog/definition.js';
import { PACKAGE_ROOT } from '../../src/config.js';
import { createCa } from '../../src/tls/certificates.js';
import { waitFor } from '../../src/wait.js';
import { redisPlainAnswer, servedCertificate } from '../helpers/tls.js';
import { startTestRedis, uniqueId } from '../helpers/env.js';
import { provisionBody } from '../helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir, type SpawnedBroker } from '../helpers/spawn-broker.js';
import { startSwarmCluster, type SwarmCluster } from '../helpers/swarm-cluster.js';

const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', plan: '92776b7b-46d1-4950-91fb-9b675ca53968' };
/** Renewed at two thirds of its life (60 s): after the checks of the first test, within the second's wait. */
const CERT_SECONDS = 90;
const INSTANCE_LABEL = 'io.osb-broker.instance';

type Creds = { host: string; port: number; tls_port: number; username: string; uri: string; rediss_uri: string; ca_certificate: string };

let cluster: SwarmCluster;
let broker: SpawnedBroker;
let brokerEnv: Record<string, string>;
/** Output of broker processes killed during the tests. */
const earlierOutput: string[] = [];
let redis: { url: string; stop(): Promise<void> };
let state: { dir: string; remove(): void };
let instance: { id: string; creds: Creds } | undefined;

test.before(async (t) => {
  cluster = await startSwarmCluster({ name: 'tls56', nodes: 2, subnet: '198.19.56.0/24', log: (line) => t.log(line) });
  t.log(`cluster ready in ${cluster.startup.ms.total} ms (reused: ${cluster.startup.reused})`);
  const definitions = loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), process.env.BROKER_IMAGE_PREFIX || 'osb-broker/');
  const tag = imageTag(definitions.find((definition) => definition.offering.name === 'redis')!);
  await cluster.loadImage(tag, [cluster.nodes[0]!.name]);
  // New instances go to the worker: the manager is drained (nothing of ours runs there).
  await cluster.drain(cluster.nodes[0]!.name);
  redis = await startTestRedis();
  state = tempStateDir();
  brokerEnv = {
    DOCKER_HOST: cluster.managerUrl,
    BROKER_ORCHESTRATOR: 'swarm',
    BROKER_ID: `tl${uniqueId('').slice(1, 9)}`,
    REDIS_URL: redis.url,
    BROKER_PASSWORD: 'swarm-tls-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    BROKER_STATE_DIR: state.dir,
    BROKER_PORT_RANGE: '46600-46699',
    BROKER_TLS_CERT_SECONDS: String(CERT_SECONDS),
    BROKER_TLS_RENEW_CHECK_SECONDS: '2',
    BROKER_RECONCILE_SECONDS: '5',
    LOG_LEVEL: 'debug',
  };
  broker = await spawnBroker({ ...brokerEnv, PORT: String(await freePort()) });
});

test.afterEach.always((t) => {
  if (!t.passed) for (const record of broker.logs().filter((each) => each.level >= 40)) t.log(JSON.stringify(record));
});

test.after.always(async () => {
  await broker?.kill('SIGTERM');
  await killAllBrokers();
  await cluster?.remove();
  await redis?.stop();
  state?.remove();
});

/** Who the server says is logged in, and whether the session ran over TLS; `tls` as ioredis takes it. */
async function whoami(uri: string, tls?: ConnectionOptions): Promise<{ user: unknown; encrypted: boolean }> {
  const client = new Redis(uri, { tls, lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let reason: Error | undefined;
  client.on('error', (error: Error) => {
    reason = error;
  });
  try {
    await client.connect();
    const user = await client.call('ACL', 'WHOAMI');
    return { user, encrypted: (client as unknown as { stream: { encrypted?: boolean } }).stream.encrypted === true };
  } catch (error) {
    throw reason ?? error;
  } finally {
    client.disconnect();
  }
}

/** The instance's secrets as the manager lists them (names, labels, and how the service mounts them). */
async function secretsOf(id: string): Promise<Array<{ name: string; labels: Record<string, string> }>> {
  const secrets = (await cluster.manager.listSecrets({ filters: { label: [`${INSTANCE_LABEL}=${id}`] } })) as unknown as Array<{
    Spec: { Name: string; Labels: Record<string, string> };
  }>;
  return secrets.map((secret) => ({ name: secret.Spec.Name, labels: secret.Spec.Labels })).sort((a, b) => a.name.localeCompare(b.name));
}

/** The names of the secrets the instance's service mounts. */
async function mountedSecrets(id: string): Promise<string[]> {
  const [service] = (await cluster.manager.listServices({ filters: { label: [`${INSTANCE_LABEL}=${id}`] } })) as unknown as Array<{
    Spec: { TaskTemplate: { ContainerSpec: { Secrets?: Array<{ SecretName: string }> } } };
  }>;
  return (service?.Spec.TaskTemplate.ContainerSpec.Secrets ?? []).map((secret) => secret.SecretName).sort();
}

async function taskContainer(engine: Docker, id: string): Promise<string | undefined> {
  const [container] = await engine.listContainers({ filters: { label: [`${INSTANCE_LABEL}=${id}`] } });
  return container?.Id;
}

test.serial('an instance on a worker serves TLS from Swarm secrets; clients verify it; require_tls closes the plain port', async (t) => {
  t.timeout(240_000);
  const worker = cluster.nodes[1]!;
  const id = uniqueId('stls');
  const started = Date.now();
  const accepted = await broker.client.provision(id, provisionBody(REDIS.service, REDIS.plan));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await broker.client.waitForInstance(id, accepted.body.operation, 180_000);
  t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
  t.log(`provisioned on the worker in ${Date.now() - started} ms`);
  const bound = await broker.client.bind(id, 'app', { service_id: REDIS.service, plan_id: REDIS.plan });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const creds = bound.body.credentials as Creds;
  t.is(creds.host, worker.ip, 'the credentials name the worker');
  t.regex(creds.ca_certificate, /^-----BEGIN CERTIFICATE-----/);
  t.is(creds.rediss_uri, creds.uri.replace(/^redis:/, 'rediss:').replace(/:\d+$/, `:${creds.tls_port}`));

  // Chain and name verified: the certificate names the worker's address.
  t.deepEqual(await whoami(creds.rediss_uri, { ca: creds.ca_certificate }), { user: creds.username, encrypted: true });
  t.regex(
    (await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate)).subjectAltName ?? '',
    new RegExp(`IP Address:${worker.ip.replace(/\./g, '\\.')}`),
  );
  const other = await createCa('other', new Date());
  await t.throwsAsync(whoami(creds.rediss_uri, { ca: other.cert }), { message: /self.signed|unable to verify|certificate/i });
  t.regex(await redisPlainAnswer(creds.host, creds.port), /^-NOAUTH/, 'plain works by default');

  // Three secrets, mounted by the service at tls.dir; nothing of them in the service's labels, env or command.
  const secrets = await secretsOf(id);
  t.is(secrets.length, 3);
  const [spec] = (await cluster.manager.listServices({ filters: { label: [`${INSTANCE_LABEL}=${id}`] } })) as unknown as Array<{
    Spec: { Labels: Record<string, string>; TaskTemplate: { ContainerSpec: Record<string, any> } };
  }>;
  const container = spec!.Spec.TaskTemplate.ContainerSpec;
  t.deepEqual((container.Secrets as Array<{ File: { Name: string; Mode: number } }>).map((secret) => [secret.File.Name, secret.File.Mode]).sort(), [
    ['/etc/osb-tls/ca.pem', 0o644],
    ['/etc/osb-tls/cert.pem', 0o644],
    ['/etc/osb-tls/key.pem', 0o600],
  ]);
  t.false(JSON.stringify({ labels: spec!.Spec.Labels, env: container.Env, args: container.Args, command: container.Command }).includes('PRIVATE KEY'));

  const update = await broker.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: REDIS.service,
    plan_id: REDIS.plan,
    parameters: { require_tls: true },
  });
  t.is(update.status, 202, JSON.stringify(update.body));
  t.is((await broker.client.waitForInstance(id, update.body.operation)).body.state, 'succeeded');
  t.is(await redisPlainAnswer(creds.host, creds.port), '', 'the plain port is closed');
  const fetched = (await broker.client.request('GET', `/v2/service_instances/${id}/service_bindings/app`)).body.credentials as Creds;
  t.is(fetched.uri, creds.rediss_uri, 'under require_tls the uri is the rediss:// one');
  t.deepEqual(await whoami(fetched.uri, { ca: creds.ca_certificate }), { user: creds.username, encrypted: true });

  // Fault: the task's container killed on the worker. Swarm starts a new one by itself, without the broker, and it
  // mounts the same secrets: the same certificate, still TLS only.
  const before = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate);
  const killed = await taskContainer(worker.engine, id);
  await worker.engine.getContainer(killed!).kill();
  const back = await waitFor(async () => servedCertificate(creds.host, creds.tls_port, creds.ca_certificate).catch(() => undefined), {
    intervalMs: 250,
    timeoutMs: 60_000,
  });
  t.not(await taskContainer(worker.engine, id), killed, 'Swarm made a new task');
  t.is(back.serialNumber, before.serialNumber);
  t.deepEqual(await waitFor(async () => whoami(fetched.uri, { ca: creds.ca_certificate }).catch(() => undefined), { intervalMs: 250, timeoutMs: 30_000 }), {
    user: creds.username,
    encrypted: true,
  });
  t.is(await redisPlainAnswer(creds.host, creds.port), '', 'require_tls holds in the new task');
  instance = { id, creds: fetched };
});

test.serial('a renewal replaces the task with new secrets; killed mid-way (kill -9), the next broker process finishes it', async (t) => {
  t.timeout(180_000);
  if (!instance) return t.fail('the first test did not finish');
  const { id, creds } = instance;
  const worker = cluster.nodes[1]!;
  const before = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate);
  const secretsBefore = (await secretsOf(id)).map((secret) => secret.name);
  t.deepEqual(await mountedSecrets(id), secretsBefore);
  // At two thirds of the certificate's life the broker makes new secrets and updates the service; it is killed as soon
  // as the service mounts them, before the new task is ready and the old secrets are removed.
  await waitFor(async () => ((await mountedSecrets(id)).some((name) => !secretsBefore.includes(name)) ? true : undefined), {
    intervalMs: 200,
    timeoutMs: CERT_SECONDS * 1000,
  });
  await broker.kill('SIGKILL');
  earlierOutput.push(...broker.stdout, ...broker.stderr);
  t.is((await secretsOf(id)).length, 6, 'the old secrets are still there');

  // Swarm replaces the task by itself: the new certificate is served and clients verify it.
  const renewed = await waitFor(
    async () => {
      const now = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate).catch(() => undefined);
      return now && now.serialNumber !== before.serialNumber ? now : undefined;
    },
    { intervalMs: 250, timeoutMs: 60_000 },
  );
  t.true(Date.parse(renewed.validTo) > Date.parse(before.validTo), `${renewed.validTo} after ${before.validTo}`);
  const session = await waitFor(async () => whoami(creds.uri, { ca: creds.ca_certificate }).catch(() => undefined), { intervalMs: 250, timeoutMs: 30_000 });
  t.deepEqual(session, { user: creds.username, encrypted: true });
  t.is(await redisPlainAnswer(creds.host, creds.port), '', 'require_tls holds after the renewal');
  const task = await taskContainer(worker.engine, id);

  // The next process finds the renewal unfinished: the task has the new files already, so it only removes the old ones.
  broker = await spawnBroker({ ...brokerEnv, PORT: String(await freePort()) });
  const remaining = await waitFor(
    async () => {
      const names = (await secretsOf(id)).map((secret) => secret.name);
      return names.length === 3 ? names : undefined;
    },
    { intervalMs: 500, timeoutMs: 60_000 },
  );
  t.deepEqual(remaining, await mountedSecrets(id));
  t.true(remaining.every((name) => !secretsBefore.includes(name)));
  t.is(await taskContainer(worker.engine, id), task, 'the task was not replaced again');
  t.is((await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate)).serialNumber, renewed.serialNumber);
});

/** Waits for the instance's next certificate renewal (every 60 s here) and returns while it runs. */
async function renewalRunning(id: string): Promise<{ state: string; description: string }> {
  const running = await waitFor(
    async () => {
      const last = await broker.client.lastOperation(id);
      return last.body.state === 'in progress' && /TLS/.test(String(last.body.description)) ? last : undefined;
    },
    { intervalMs: 100, timeoutMs: CERT_SECONDS * 1000 },
  );
  return running.body as { state: string; description: string };
}

test.serial('a renewal is an instance operation: a bind that comes meanwhile waits for its end, then succeeds', async (t) => {
  t.timeout(180_000);
  if (!instance) return t.fail('the first test did not finish');
  const { id } = instance;
  t.deepEqual(await renewalRunning(id), { state: 'in progress', description: 'Renewing the TLS certificate.' });
  const asked = Date.now();
  const bind = await broker.client.bind(id, 'late', { service_id: REDIS.service, plan_id: REDIS.plan });
  t.is(bind.status, 201, JSON.stringify(bind.body));
  t.log(`the bind came during the renewal and was answered ${Date.now() - asked} ms later`);
  const renewal = await broker.client.lastOperation(id);
  t.is(renewal.body.state, 'succeeded', `the renewal had ended when the bind was answered: ${JSON.stringify(renewal.body)}`);
  t.regex(String(renewal.body.description), /^Renewed the TLS certificate; it is valid until /);
  const creds = bind.body.credentials as Creds;
  const session = await waitFor(async () => whoami(creds.uri, { ca: creds.ca_certificate }).catch(() => undefined), { intervalMs: 250, timeoutMs: 30_000 });
  t.deepEqual(session, { user: creds.username, encrypted: true });
});

test.serial('a deprovision during a renewal stops it, and leaves no secret, container or volume; the key never reached the log', async (t) => {
  t.timeout(180_000);
  if (!instance) return t.fail('the first test did not finish');
  const { id } = instance;
  const worker = cluster.nodes[1]!;
  for (const bindingId of ['app', 'late']) {
    const unbound = await broker.client.unbind(id, bindingId, REDIS.service, REDIS.plan);
    t.is(unbound.status, 200, JSON.stringify(unbound.body));
  }
  // The service is being updated to a new task when the deprovision comes.
  await renewalRunning(id);
  const gone = await broker.client.deprovision(id, REDIS.service, REDIS.plan);
  t.is(gone.status, 202, JSON.stringify(gone.body));
  const ended = await broker.client.waitForInstance(id, gone.body.operation);
  t.is(ended.body.state, 'succeeded', JSON.stringify(ended.body));
  t.deepEqual(await secretsOf(id), []);
  t.deepEqual(await mountedSecrets(id), [], 'no service left');
  const containers = await worker.engine.listContainers({ all: true, filters: { label: [`${INSTANCE_LABEL}=${id}`] } });
  t.deepEqual(containers, [], 'no container left on the worker');
  const volumes = await worker.engine.listVolumes({ filters: { label: [`${INSTANCE_LABEL}=${id}`] } });
  t.deepEqual(volumes.Volumes ?? [], [], 'no volume left on the worker');
  t.false([...earlierOutput, ...broker.stdout, ...broker.stderr].some((line) => line.includes('PRIVATE KEY')));
});
