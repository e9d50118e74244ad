import test from 'ava';
import { Redis } from 'ioredis';
import { LABEL } from '../src/docker/types.js';
import { brokerObjects, keysFromRequests, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

// Ids are the platform's: any characters but control characters. They go through the whole lifecycle against the
// real engine, and become safe container, volume and Redis key names on the way.
const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
const TOMBSTONE_SECONDS = 120;

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(23, { tombstoneSeconds: TOMBSTONE_SECONDS });
});
test.after.always(async () => {
  await env?.stop();
});

/** Remaining seconds of a stored record, as Redis says: -1 for none, -2 when the key does not exist. */
async function ttlOf(key: string): Promise<number> {
  const redis = new Redis(env.redisUrl);
  try {
    return await redis.ttl(key);
  } finally {
    redis.disconnect();
  }
}

const operationKey = (id: string) => `osb:${env.config.brokerId}:operation:${id}`;

test('an instance and a binding with "~", "/", "%2F", ":" and other odd characters in their ids live and die like any other', async (t) => {
  const { client, config } = env;
  const instanceId = `${uniqueId('odd')}~/%2F:ünï d`;
  const bindingId = `${uniqueId('b')}~%2F/:*`;
  const instancePath = `/v2/service_instances/${encodeURIComponent(instanceId)}`;
  const bindingPath = `${instancePath}/service_bindings/${encodeURIComponent(bindingId)}`;
  const query = `service_id=${REDIS.service}&plan_id=${REDIS.small}`;

  const accepted = await client.request('PUT', `${instancePath}?accepts_incomplete=true`, provisionBody(REDIS.service, REDIS.small));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const provisioned = await client.untilFinished(() => client.request('GET', `${instancePath}/last_operation`), 180_000);
  t.is(provisioned.body.state, 'succeeded', JSON.stringify(provisioned.body));

  // One container and one volume, their names safe for Docker, the id exact in their labels.
  const objects = await brokerObjects(config.brokerId);
  t.is(objects.containers.length, 1);
  t.is(objects.volumes.length, 1);
  const container = objects.containers[0]!;
  t.regex(container.name, new RegExp(`^osb-${config.brokerId}-[A-Za-z0-9][A-Za-z0-9_.-]*_[0-9a-f]{32}$`));
  t.is(container.labels[LABEL.instance], instanceId);
  t.is(objects.volumes[0]!.name, `${container.name}-data`);

  // Fetch, listing and the dashboard link all carry the id exactly.
  const fetched = await client.request('GET', instancePath);
  t.is(fetched.status, 200);
  const dashboard = new URL(fetched.body.dashboard_url as string);
  t.is(dashboard.pathname, `/dashboard/instances/${encodeURIComponent(instanceId)}`);
  const listing = await client.request('GET', '/broker/v1/instances');
  t.deepEqual(
    listing.body.instances.map((instance: { id: string }) => instance.id),
    [instanceId],
  );
  const opened = await fetch(`${client.url}${dashboard.pathname}${dashboard.search}`, { redirect: 'manual' });
  t.is(opened.status, 303);
  const cookie = opened.headers.get('set-cookie') ?? '';
  t.true(cookie.includes(`path=${dashboard.pathname}`), cookie);
  const page = await fetch(`${client.url}${dashboard.pathname}`, { headers: { cookie: cookie.split(';')[0]! } });
  t.is(page.status, 200);
  t.true((await page.text()).includes('</html>'));

  // Bind, fetch the binding, and use its credentials.
  const bound = await client.request('PUT', bindingPath, { service_id: REDIS.service, plan_id: REDIS.small });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const binding = await client.request('GET', bindingPath);
  t.is(binding.status, 200);
  t.deepEqual(binding.body.credentials, bound.body.credentials);
  const redis = new Redis(bound.body.credentials.uri as string, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => {});
  try {
    await redis.connect();
    t.is(await redis.set('odd-ids', 'yes'), 'OK');
    t.is(await redis.get('odd-ids'), 'yes');
  } finally {
    redis.disconnect();
  }
  t.is((await client.request('GET', `${bindingPath}/last_operation`)).body.state, 'succeeded');

  // The latest operations of a live instance and binding stay; the ids are encoded in the keys.
  const provisionOperation = accepted.body.operation as string;
  const bindOperation = (await storedOperations()).find((operation) => operation.type === 'bind')!;
  t.is(bindOperation.bindingId, bindingId);
  t.is(await ttlOf(operationKey(provisionOperation)), -1);
  t.is(await ttlOf(operationKey(bindOperation.id)), -1);
  const keys = await redisKeysOf();
  t.true(keys.includes(`osb:${config.brokerId}:instance:${encodeKeyPart(instanceId)}`), keys.join(' '));
  t.true(keys.includes(`osb:${config.brokerId}:binding:${encodeKeyPart(instanceId)}:${encodeKeyPart(bindingId)}`), keys.join(' '));

  // Unbind, deprovision, then the id is gone.
  t.is((await client.request('DELETE', `${bindingPath}?${query}`)).status, 200);
  t.is((await client.request('GET', bindingPath)).status, 404);
  const deleting = await client.request('DELETE', `${instancePath}?${query}&accepts_incomplete=true`);
  t.is(deleting.status, 202);
  const deleted = await client.untilFinished(() => client.request('GET', `${instancePath}/last_operation?operation=${deleting.body.operation}`), 60_000);
  t.is(deleted.body.state, 'succeeded');
  t.is((await client.request('DELETE', `${instancePath}?${query}&accepts_incomplete=true`)).status, 410);
  t.is((await client.request('DELETE', `${bindingPath}?${query}`)).status, 410);
  t.is((await client.request('GET', instancePath)).status, 404);
  t.deepEqual(await brokerObjects(config.brokerId), { containers: [], volumes: [] });

  // Operations that are no longer the latest of a live resource expire after the tombstone time; nothing stays.
  const operations = await storedOperations();
  t.deepEqual(operations.map((operation) => operation.type).sort(), ['bind', 'deprovision', 'provision', 'unbind']);
  for (const operation of operations) {
    const ttl = await ttlOf(operationKey(operation.id));
    t.true(ttl > 0 && ttl <= TOMBSTONE_SECONDS, `${operation.type} operation: ttl ${ttl}`);
  }
  for (const key of await redisKeysOf()) {
    const ttl = await ttlOf(key);
    t.true(ttl > 0 && ttl <= TOMBSTONE_SECONDS, `${key} expires (ttl ${ttl})`);
  }
});

function encodeKeyPart(part: string): string {
  return part.replace(/[^A-Za-z0-9_.-]/gu, (char) => [...Buffer.from(char)].map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join(''));
}

/** The operation records of this broker, as stored. */
async function storedOperations(): Promise<Array<{ id: string; type: string; bindingId?: string }>> {
  const redis = new Redis(env.redisUrl);
  try {
    const keys = await redis.keys(`osb:${env.config.brokerId}:operation:*`);
    const values = keys.length ? await redis.mget(...keys) : [];
    return values.flatMap((value) => (value ? [JSON.parse(value) as { id: string; type: string; bindingId?: string }] : []));
  } finally {
    redis.disconnect();
  }
}

/** The keys the requests made (not the leases of the broker's own periodic work). */
const redisKeysOf = () => keysFromRequests(env.redisUrl, env.config.brokerId);
