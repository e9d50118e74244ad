import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { ConfigError, loadConfig, PACKAGE_ROOT } from '../src/config.js';
import { LABEL } from '../src/docker/types.js';
import { stateContainerName, stateImageTag } from '../src/embedded-redis.js';
import { waitFor } from '../src/wait.js';
import { brokerObjects, engine, removeEverything } from './helpers/env.js';
import { OsbClient, provisionBody, type Reply } from './helpers/osb-client.js';

// The broker as a container image (images/broker/Dockerfile, built by scripts/broker-image.sh), run as an operator
// runs it on one engine, and the Swarm stack file checked (not deployed). Port block 44100-44199: the broker in a
// bridge network on 127.0.0.1:44100 with instances on 44110-44129; the broker on the host network on 44101.
// OSB_BROKER_IMAGE=<tag> skips the build and tests that image.

const run = promisify(execFile);
const docker = async (...args: string[]) => (await run('docker', args, { maxBuffer: 16 * 1024 * 1024 })).stdout.trim();

const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const SOCKET = '/var/run/docker.sock';

let image: string;
test.before(async () => {
  image =
    process.env.OSB_BROKER_IMAGE ||
    (await run('bash', [path.join(PACKAGE_ROOT, 'scripts/broker-image.sh')], { maxBuffer: 16 * 1024 * 1024 })).stdout.trim().split('\n').pop()!;
});

/** Everything a test made, removed whatever happened. */
function cleanup(t: ExecutionContext, brokerId: string, containers: string[], folders: string[] = []) {
  t.teardown(async () => {
    for (const name of containers) await docker('rm', '-f', '-v', name).catch(() => '');
    await removeEverything(brokerId);
    for (const folder of folders) rmSync(folder, { recursive: true, force: true });
  });
}

/** Waits for /readyz to answer 200; fails with the container's log when it stops or never gets ready. */
async function waitReady(url: string, container: string): Promise<Reply['body']> {
  try {
    return await waitFor(
      async () => {
        const response = await fetch(`${url}/readyz`).catch(() => undefined);
        if (response?.status === 200) return (await response.json()) as Reply['body'];
        await response?.body?.cancel();
        if ((await docker('inspect', '-f', '{{.State.Running}}', container)) !== 'true') throw new Error(`${container} stopped`);
        return undefined;
      },
      { intervalMs: 250, timeoutMs: 90_000 },
    );
  } catch (error) {
    const log = await run('docker', ['logs', '--tail', '30', container]).then(
      (output) => output.stdout + output.stderr,
      (failure: Error) => failure.message,
    );
    throw new Error(`${(error as Error).message}; its log:\n${log}`, { cause: error });
  }
}

async function redisLogin(uri: string): Promise<Redis> {
  const redis = new Redis(uri, { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let reason: Error | undefined;
  redis.on('error', (error: Error) => (reason = error));
  try {
    await redis.connect();
    return redis;
  } catch (error) {
    redis.disconnect();
    throw reason ?? error;
  }
}

test('one engine: the image provisions, binds, unbinds and deprovisions a redis through the host socket', async (t) => {
  const brokerId = `img${randomBytes(4).toString('hex')}`;
  const network = `osb-${brokerId}-net`;
  const redisName = `osb-${brokerId}-redis`;
  const brokerName = `osb-${brokerId}-broker`;
  const secrets = mkdtempSync(path.join(tmpdir(), 'osb-image-secrets-'));
  cleanup(t, brokerId, [brokerName, redisName], [secrets]);

  // The state Redis on a network shared with the broker, as in the stack file (password from a file).
  const redisPassword = randomBytes(18).toString('hex');
  await engine.ensureNetwork(network, { [LABEL.broker]: brokerId });
  await engine.createContainer({ name: redisName, image: stateImageTag('osb-broker/'), labels: { [LABEL.role]: 'test-redis' }, network });
  await engine.putFile(redisName, '/run/redis', { name: 'password', content: Buffer.from(redisPassword), mode: 0o400, uid: 999, gid: 999 });
  await engine.startContainer(redisName);

  // The broker's secrets as files (the *_FILE settings), readable by its uid through a read-only bind mount.
  const password = randomBytes(12).toString('hex');
  const files = {
    broker_password: `${password}\n`,
    broker_encryption_key: randomBytes(32).toString('hex'),
    redis_url: `redis://:${redisPassword}@${redisName}:6379/0`,
  };
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(secrets, name), content, { mode: 0o644 });
  chmodSync(secrets, 0o755);
  await waitFor(async () => ((await engine.exec(redisName, ['redis-cli', 'ping'])).stdout.includes('NOAUTH') ? true : undefined), {
    intervalMs: 100,
    timeoutMs: 20_000,
  });

  const url = 'http://127.0.0.1:44100';
  // The command of README "Container image", with this test's names, ports and secrets.
  await docker(
    'run',
    '-d',
    '--name',
    brokerName,
    '--group-add',
    String(statSync(SOCKET).gid),
    '-v',
    `${SOCKET}:${SOCKET}`,
    '-v',
    `${secrets}:/run/secrets:ro`,
    '--network',
    network,
    '-p',
    '127.0.0.1:44100:8080',
    '--add-host',
    'host.docker.internal:host-gateway',
    '--stop-timeout',
    '30',
    '-e',
    `BROKER_ID=${brokerId}`,
    '-e',
    'BROKER_PORT_RANGE=44110-44129',
    '-e',
    'BROKER_PUBLISH_IP=0.0.0.0',
    '-e',
    'BROKER_PROBE_HOST=host.docker.internal',
    '-e',
    'BROKER_ADVERTISED_HOST=127.0.0.1',
    '-e',
    `BROKER_PUBLIC_URL=${url}`,
    '-e',
    'BROKER_PASSWORD_FILE=/run/secrets/broker_password',
    '-e',
    'BROKER_ENCRYPTION_KEY_FILE=/run/secrets/broker_encryption_key',
    '-e',
    'REDIS_URL_FILE=/run/secrets/redis_url',
    image,
  );
  const ready = await waitReady(url, brokerName);
  t.deepEqual(ready.checks, { redis: 'ok', docker: 'ok' });

  // What the image is: a user, not root; a health check; the version label.
  const config = JSON.parse(await docker('inspect', '-f', '{{json .Config}}', brokerName));
  t.is(config.User, '10001:10001');
  t.deepEqual(config.Entrypoint, ['node', 'dist/src/main.js']);
  t.deepEqual(config.Healthcheck.Test, ['CMD', 'node', 'dist/src/cli/healthcheck.js']);
  const version = (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  t.is(config.Labels['org.opencontainers.image.version'], version);
  t.is(await docker('exec', brokerName, 'node', 'dist/src/cli/healthcheck.js'), '', 'the health check passes');

  const client = new OsbClient(url, 'broker', password);
  const catalog = await client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  t.true(catalog.body.services.some((service: { id: string }) => service.id === REDIS.service));
  t.is((await new OsbClient(url, 'broker', 'wrong').request('GET', '/v2/catalog')).status, 401);

  const instanceId = `image-${randomBytes(4).toString('hex')}`;
  t.is((await client.provision(instanceId, provisionBody(REDIS.service, REDIS.small))).status, 202);
  const provisioned = await client.waitForInstance(instanceId, undefined, 120_000);
  t.is(provisioned.body.state, 'succeeded', JSON.stringify(provisioned.body));

  const bound = await client.bind(instanceId, 'app-1', { service_id: REDIS.service, plan_id: REDIS.small, bind_resource: { app_guid: 'app' } });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const credentials = bound.body.credentials as { uri: string; host: string; port: number };
  t.is(credentials.host, '127.0.0.1');
  t.true(credentials.port >= 44110 && credentials.port <= 44129, `port ${credentials.port}`);
  const redis = await redisLogin(credentials.uri);
  try {
    t.is(await redis.set('from-the-image', 'ok'), 'OK');
    t.is(await redis.get('from-the-image'), 'ok');
  } finally {
    redis.disconnect();
  }

  t.is((await client.unbind(instanceId, 'app-1', REDIS.service, REDIS.small)).status, 200);
  const refused = await t.throwsAsync(redisLogin(credentials.uri));
  t.regex(refused?.message ?? '', /WRONGPASS|NOAUTH|invalid username-password/i);

  t.is((await client.deprovision(instanceId, REDIS.service, REDIS.small)).status, 202);
  const deprovisioned = await client.waitForInstance(instanceId, undefined, 60_000);
  t.true(deprovisioned.status === 410 || deprovisioned.body.state === 'succeeded', JSON.stringify(deprovisioned.body));
  const left = await brokerObjects(brokerId);
  t.deepEqual([left.containers, left.volumes], [[], []]);

  // SIGTERM reaches node (PID 1), which stops gracefully: exit code 0.
  await docker('stop', brokerName);
  t.is(await docker('inspect', '-f', '{{.State.ExitCode}}', brokerName), '0');
});

test('one engine, host network: the broker runs its own state Redis', async (t) => {
  const brokerId = `img${randomBytes(4).toString('hex')}`;
  const brokerName = `osb-${brokerId}-broker`;
  cleanup(t, brokerId, [brokerName]);
  const password = randomBytes(12).toString('hex');
  await docker(
    'run',
    '-d',
    '--name',
    brokerName,
    '--network',
    'host',
    '--group-add',
    String(statSync(SOCKET).gid),
    '-v',
    `${SOCKET}:${SOCKET}`,
    '-e',
    'PORT=44101',
    '-e',
    'BROKER_LISTEN_HOST=127.0.0.1',
    '-e',
    `BROKER_ID=${brokerId}`,
    '-e',
    'BROKER_PORT_RANGE=44130-44149',
    '-e',
    `BROKER_PASSWORD=${password}`,
    '-e',
    `BROKER_ENCRYPTION_KEY=${randomBytes(32).toString('hex')}`,
    image,
  );
  const url = 'http://127.0.0.1:44101';
  const ready = await waitReady(url, brokerName);
  t.deepEqual(ready.checks, { redis: 'ok', docker: 'ok' });
  t.is((await engine.inspectContainer(stateContainerName(brokerId)))?.running, true);
  t.is((await new OsbClient(url, 'broker', password).request('GET', '/v2/catalog')).status, 200);
});

test('the stack file is valid for docker stack and says what it must', async (t) => {
  const file = path.join(PACKAGE_ROOT, 'deploy/stack.yml');
  const env = { ...process.env, DOCKER_GID: '999', BROKER_PUBLIC_URL: 'http://broker.example:8080' };
  // Debian's docker.io, which .ci/run installs, has `docker stack config`: the file is always checked.
  const text = (await run('docker', ['stack', 'config', '-c', file], { env })).stdout;
  for (const expected of [
    /^ {6}replicas: 2$/m,
    /^ {10}- node\.role == manager$/m,
    /^ {8}order: start-first$/m,
    /^ {6}BROKER_ORCHESTRATOR: swarm$/m,
    /^ {6}BROKER_SHUTDOWN_SECONDS: "25"$/m,
    /^ {4}stop_grace_period: 30s$/m,
    /^ {6}- mode: ingress$/m,
    /^ {6}REDIS_URL_FILE: \/run\/secrets\/osb_redis_url$/m,
    /^ {4}user: 10001:999$/m,
    /^ {4}image: osb-broker\/state-redis:1\.0\.0$/m,
    /^ {6}- --appendonly$/m,
    /^ {4}driver: overlay$/m,
  ]) {
    t.regex(text, expected);
  }
  // Without the required settings, the deploy stops at once and says what is missing.
  const missing = await t.throwsAsync(run('docker', ['stack', 'config', '-c', file], { env: { ...env, DOCKER_GID: '' } }));
  t.regex(String((missing as { stderr?: string }).stderr), /DOCKER_GID/);
});

test('secrets come from *_FILE settings and the published ports are probed at BROKER_PROBE_HOST', (t) => {
  const folder = mkdtempSync(path.join(tmpdir(), 'osb-config-'));
  try {
    const file = (name: string, content: string) => {
      writeFileSync(path.join(folder, name), content);
      return path.join(folder, name);
    };
    const key = randomBytes(32);
    const config = loadConfig({
      BROKER_PASSWORD_FILE: file('password', 'from-a-file\n'),
      BROKER_ENCRYPTION_KEY_FILE: file('key', `${key.toString('hex')}\n`),
      REDIS_URL_FILE: file('redis', 'redis://:p@state-redis:6379/0'),
    });
    t.is(config.password, 'from-a-file');
    t.deepEqual(config.encryptionKey, key);
    t.is(config.redisUrl, 'redis://:p@state-redis:6379/0');
    t.is(loadConfig({ BROKER_PASSWORD: 'env', BROKER_PASSWORD_FILE: path.join(folder, 'password') }).password, 'env', 'the variable wins');
    const error = t.throws(() => loadConfig({ REDIS_URL_FILE: path.join(folder, 'missing') }));
    t.true(error instanceof ConfigError);
    t.regex(error?.message ?? '', /^REDIS_URL_FILE: cannot read .*missing/);
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
  t.is(loadConfig({}).probeHost, '127.0.0.1');
  t.is(loadConfig({ BROKER_PUBLISH_IP: '0.0.0.0' }).probeHost, '127.0.0.1');
  t.is(loadConfig({ BROKER_PUBLISH_IP: '::' }).probeHost, '::1');
  t.is(loadConfig({ BROKER_PUBLISH_IP: '10.0.0.5' }).probeHost, '10.0.0.5');
  t.is(loadConfig({ BROKER_PUBLISH_IP: '0.0.0.0', BROKER_PROBE_HOST: 'host.docker.internal' }).probeHost, 'host.docker.internal');
});
