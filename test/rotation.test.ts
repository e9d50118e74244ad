import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Redis } from 'ioredis';
import { PACKAGE_ROOT } from '../src/config.js';
import { pgQuery, stopAllWatchers } from './helpers/engine-watch.js';
import { PG, removeEverything, startTestBroker, startTestRedis, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody, type OsbClient } from './helpers/osb-client.js';
import { freePort, hexKey, killAllBrokers, spawnBroker, tempStateDir } from './helpers/spawn-broker.js';
import { storedRecord } from './helpers/wait.js';

// Port block 52 (46200-46299): the in-process broker takes 46200-46249, the spawned ones of the fault test 46250-46299.
// Binding rotation (OSB 2.17) against the real engines with the real clients: old and new credentials both work
// until the predecessor is unbound, then only the new ones. The rules in full are in test/unit/rotation.test.ts.

const CLI = path.join(PACKAGE_ROOT, 'dist/src/cli/osb-docker.js');

let env: TestBroker;
const spawned: { redis?: Awaited<ReturnType<typeof startTestRedis>>; brokerIds: string[]; stateDirs: Array<{ remove(): void }> } = {
  brokerIds: [],
  stateDirs: [],
};

test.before(async () => {
  env = await startTestBroker(52, { portRange: { first: 46200, last: 46249 } });
});
test.after.always(async () => {
  stopAllWatchers();
  await killAllBrokers();
  for (const brokerId of spawned.brokerIds) await removeEverything(brokerId);
  await spawned.redis?.stop();
  for (const dir of spawned.stateDirs) dir.remove();
  await env?.stop();
});

const bindingPath = (instance: string, binding: string) => `/v2/service_instances/${instance}/service_bindings/${binding}`;

async function provisioned(t: ExecutionContext, client: OsbClient, id: string, service: { service: string; small: string }, name: string) {
  const accepted = await client.provision(id, provisionBody(service.service, service.small, { context: { platform: 'cloudfoundry', instance_name: name } }));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const done = await client.waitForInstance(id, accepted.body.operation, 180_000);
  t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
}

async function deprovisioned(t: ExecutionContext, client: OsbClient, id: string, service: { service: string; small: string }) {
  const deleting = await client.deprovision(id, service.service, service.small);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  t.is((await client.waitForInstance(id, deleting.body.operation, 120_000)).body.state, 'succeeded');
}

/** PostgreSQL through a binding's uri: who is logged in, and the row the first binding wrote. */
const pgRead = async (uri: string) =>
  (await pgQuery(uri, 'SELECT session_user AS who, (SELECT note FROM notes) AS note')).rows[0] as { who: string; note: string };
const PG_REFUSED = /password authentication failed|role .* does not exist/;

/** A Redis login with a binding's host, port, username and password, as an app takes them. */
async function redisGet(credentials: Record<string, unknown>, key: string): Promise<string | null> {
  const redis = new Redis({
    host: credentials.host as string,
    port: credentials.port as number,
    username: credentials.username as string,
    password: credentials.password as string,
    lazyConnect: true,
    connectTimeout: 5000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  // A refused login closes the connection; the server's reason (WRONGPASS) arrives as an error event.
  let reason: Error | undefined;
  redis.on('error', (error: Error) => {
    reason = error;
  });
  try {
    await redis.connect();
    return await redis.get(key);
  } catch (error) {
    throw reason ?? error;
  } finally {
    redis.disconnect();
  }
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const childEnv = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('OSB_BROKER_') && name !== 'BROKER_STATE_DIR'));
  Object.assign(childEnv, { OSB_BROKER_URL: env.broker.url, OSB_BROKER_USERNAME: env.config.username, OSB_BROKER_PASSWORD: env.config.password });
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: PACKAGE_ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
const show = (result: { code: number | null; stdout: string; stderr: string }) => `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;

test('the real catalog says binding_rotatable to 2.17 clients only', async (t) => {
  const plansOf = async (version: string) => {
    const reply = await env.client.request('GET', '/v2/catalog', undefined, { version });
    const services = reply.body.services as Array<{ name: string; plans: Array<Record<string, unknown>> }>;
    return Object.fromEntries(services.map((service) => [service.name, service.plans.map((plan) => plan.binding_rotatable)]));
  };
  const latest = await plansOf('2.17');
  t.deepEqual(latest.postgresql, [true, true]);
  t.deepEqual(latest.redis, [true, true]);
  t.deepEqual(latest['syslog-drain'], [undefined, undefined]);
  t.true(Object.values(await plansOf('2.16')).every((plans) => plans.every((value) => value === undefined)));
});

test('PostgreSQL: the successor logs in as a new role beside its predecessor; once the predecessor is unbound only the successor gets in', async (t) => {
  const { client } = env;
  const id = uniqueId('rot-pg');
  await provisioned(t, client, id, PG, 'rotation-pg');
  const first = await client.bind(id, 'b1', { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } });
  t.is(first.status, 201, JSON.stringify(first.body));
  const old = first.body.credentials as Record<string, string>;
  await pgQuery(old.uri!, "CREATE TABLE notes (note text); INSERT INTO notes VALUES ('written before the rotation')");

  // A 2.16 client cannot rotate, nor can one that names a binding that is not there: nothing is created.
  const tooOld = await client.request('PUT', bindingPath(id, 'b2'), { predecessor_binding_id: 'b1' }, { version: '2.16' });
  t.is(tooOld.status, 400, JSON.stringify(tooOld.body));
  const unknown = await client.bind(id, 'b2', { predecessor_binding_id: 'not-there' });
  t.is(unknown.status, 400, JSON.stringify(unknown.body));
  t.is((await client.request('GET', bindingPath(id, 'b2'))).status, 404);

  const rotated = await client.bind(id, 'b2', { predecessor_binding_id: 'b1' });
  t.is(rotated.status, 201, JSON.stringify(rotated.body));
  const fresh = rotated.body.credentials as Record<string, string>;
  t.not(fresh.username, old.username);
  t.not(fresh.password, old.password);
  t.is(fresh.database, old.database);
  t.deepEqual(await pgRead(old.uri!), { who: old.username, note: 'written before the rotation' });
  t.deepEqual(await pgRead(fresh.uri!), { who: fresh.username, note: 'written before the rotation' });
  // Fetching the successor answers with the spec's fields only: the predecessor is in the broker's own listing.
  const fetched = await client.request('GET', bindingPath(id, 'b2'));
  t.deepEqual(Object.keys(fetched.body).sort(), ['credentials', 'endpoints', 'parameters']);
  const listed = (await client.request('GET', '/broker/v1/instances')).body.instances as Array<{
    id: string;
    bindings: Array<{ id: string; predecessor_id?: string }>;
  }>;
  t.is(listed.find((instance) => instance.id === id)!.bindings.find((binding) => binding.id === 'b2')!.predecessor_id, 'b1');

  t.is((await client.unbind(id, 'b1', PG.service, PG.small)).status, 200);
  await t.throwsAsync(pgRead(old.uri!), { message: PG_REFUSED });
  t.deepEqual(await pgRead(fresh.uri!), { who: fresh.username, note: 'written before the rotation' });
  // The unbound predecessor cannot be rotated again.
  const fromGone = await client.bind(id, 'b3', { predecessor_binding_id: 'b1' });
  t.is(fromGone.status, 400, JSON.stringify(fromGone.body));
  await deprovisioned(t, client, id, PG);
});

test('Redis through the CLI: rotate keeps both ACL users until the old binding is unbound; env hands out the new credentials', async (t) => {
  const name = `rot-cache-${randomBytes(3).toString('hex')}`;
  const created = await cli(['create', 'redis', 'small', name]);
  t.is(created.code, 0, show(created));
  const bound = await cli(['bind', name, '--as', 'cache']);
  t.is(bound.code, 0, show(bound));
  const credentialsOf = async () => {
    const printed = await cli(['env', name, '--json']);
    t.is(printed.code, 0, show(printed));
    return (JSON.parse(printed.stdout) as Record<string, Array<{ credentials: Record<string, unknown> }>>).redis!.map((entry) => entry.credentials);
  };
  const [old] = await credentialsOf();
  const instanceId = (await env.client.request('GET', '/broker/v1/instances')).body.instances.find((instance: { name?: string }) => instance.name === name)
    .id as string;
  const writer = new Redis({ host: old!.host as string, port: old!.port as number, username: old!.username as string, password: old!.password as string });
  await writer.set('greeting', 'hello');
  writer.disconnect();

  const rotated = await cli(['rotate', name]);
  t.is(rotated.code, 0, show(rotated));
  const successorId = /new binding (\S+) succeeds (\S+)\./.exec(rotated.stdout);
  t.truthy(successorId, show(rotated));
  t.regex(rotated.stderr, new RegExp(`osb-docker unbind ${name} --as ${successorId![2]}`));
  const fresh = (await env.client.request('GET', bindingPath(instanceId, successorId![1]!))).body.credentials as Record<string, unknown>;
  t.not(fresh.username, old!.username);
  t.is(await redisGet(old!, 'greeting'), 'hello');
  t.is(await redisGet(fresh, 'greeting'), 'hello');
  t.is((await credentialsOf()).length, 2);

  // The old binding by its id; then only the new credentials get in, and env has only them.
  const unbound = await cli(['unbind', name, '--as', successorId![2]!]);
  t.is(unbound.code, 0, show(unbound));
  await t.throwsAsync(redisGet(old!, 'greeting'), { message: /WRONGPASS|invalid username-password/ });
  t.is(await redisGet(fresh, 'greeting'), 'hello');
  t.deepEqual(
    (await credentialsOf()).map((credentials) => credentials.username),
    [fresh.username],
  );

  // rotate --unbind-predecessor does both steps; the binding keeps its name.
  const again = await cli(['rotate', name, '--as', 'cache', '--unbind-predecessor']);
  t.is(again.code, 0, show(again));
  t.regex(again.stdout, /Unbound cache from/);
  const [newest] = await credentialsOf();
  t.not(newest!.username, fresh.username);
  t.is(await redisGet(newest!, 'greeting'), 'hello');
  await t.throwsAsync(redisGet(fresh, 'greeting'), { message: /WRONGPASS|invalid username-password/ });
  const listed = await cli(['list']);
  t.regex(listed.stdout, new RegExp(`${name}\\s+redis\\s+small\\s+ready\\s+\\S+:\\d+\\s+cache\\s`));

  const deleted = await cli(['delete', name]);
  t.is(deleted.code, 0, show(deleted));
});

test('a broker killed (SIGKILL) during a rotation: the next process ends the successor ready and working, and the predecessor works throughout', async (t) => {
  spawned.redis = await startTestRedis();
  const brokerId = `rot${randomBytes(4).toString('hex')}`;
  spawned.brokerIds.push(brokerId);
  const state = tempStateDir();
  spawned.stateDirs.push(state);
  const brokerEnv = {
    PORT: String(await freePort()),
    BROKER_PASSWORD: 'rotation-password',
    BROKER_ENCRYPTION_KEY: hexKey(),
    REDIS_URL: spawned.redis.url,
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: '46250-46299',
    BROKER_STATE_DIR: state.dir,
    // The killed process's lease lapses after this; the next one continues its operations then.
    BROKER_LEASE_SECONDS: '3',
    BROKER_SWEEP_SECONDS: '1',
    LOG_LEVEL: 'info',
  };
  const id = uniqueId('rot-kill');
  const first = await spawnBroker(brokerEnv);
  await provisioned(t, first.client, id, PG, 'rotation-kill');
  const bound = await first.client.bind(id, 'b1', { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const old = bound.body.credentials as Record<string, string>;
  await pgQuery(old.uri!, "CREATE TABLE notes (note text); INSERT INTO notes VALUES ('kept')");

  // The successor's record is written before the 202; its bind script runs after it, in the background.
  const accepted = await first.client.bind(id, 'b2', { predecessor_binding_id: 'b1' }, true);
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  t.is((await first.kill('SIGKILL')).signal, 'SIGKILL');
  const left = await storedRecord(spawned.redis.url, brokerId, 'binding', `${id}:b2`);
  t.is(left?.predecessorBindingId, 'b1');
  t.log(`the killed process left the successor ${String(left?.state)}`);
  t.deepEqual(await pgRead(old.uri!), { who: old.username, note: 'kept' });

  const second = await spawnBroker(brokerEnv);
  const done = await second.client.waitForBinding(id, 'b2', 60_000);
  t.deepEqual(done.body, { state: 'succeeded', description: 'The service binding is ready.' });
  const fetched = await second.client.request('GET', bindingPath(id, 'b2'));
  t.is(fetched.status, 200, JSON.stringify(fetched.body));
  const fresh = fetched.body.credentials as Record<string, string>;
  t.not(fresh.username, old.username);
  t.deepEqual(await pgRead(fresh.uri!), { who: fresh.username, note: 'kept' });
  t.deepEqual(await pgRead(old.uri!), { who: old.username, note: 'kept' });
  // The same rotation again is that binding, with the same credentials.
  const again = await second.client.bind(id, 'b2', { predecessor_binding_id: 'b1' });
  t.is(again.status, 200);
  t.deepEqual(again.body.credentials, fresh);

  t.is((await second.client.unbind(id, 'b1', PG.service, PG.small)).status, 200);
  await t.throwsAsync(pgRead(old.uri!), { message: PG_REFUSED });
  t.deepEqual(await pgRead(fresh.uri!), { who: fresh.username, note: 'kept' });
  await deprovisioned(t, second.client, id, PG);
  await second.kill('SIGTERM');
});
