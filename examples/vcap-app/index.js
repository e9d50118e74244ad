// Finds a PostgreSQL and a Redis in VCAP_SERVICES (as Cloud Foundry, or `osb-docker env`, sets it), writes to
// each and reads the value back. Exits 0 when both worked, 1 otherwise.
import { randomUUID } from 'node:crypto';
import cfenv from 'cfenv';
import pg from 'pg';
import { Redis } from 'ioredis';

// Off Cloud Foundry, cfenv reads VCAP_SERVICES all the same. The `vcap` option gives its local defaults: this app
// serves nothing, and port 0 keeps cfenv from registering a port in ~/.ports.json.
const appEnv = cfenv.getAppEnv({ name: 'vcap-app', vcap: { application: { port: 0 } } });

/** The first bound service that carries one of these labels or tags (service names are the user's to choose). */
function findService(...kinds) {
  const service = Object.values(appEnv.getServices()).find(
    (candidate) => kinds.includes(candidate.label) || (candidate.tags ?? []).some((tag) => kinds.includes(tag)),
  );
  if (!service) {
    throw new Error(`no ${kinds[0]} service in VCAP_SERVICES (bound: ${Object.keys(appEnv.getServices()).join(', ') || 'none'})`);
  }
  return service;
}

async function usePostgres(service, token) {
  // appEnv.getServiceCreds(service.name) is what most apps call once they know the name.
  const { uri } = appEnv.getServiceCreds(service.name);
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    await client.query('CREATE TABLE IF NOT EXISTS vcap_app_visits (id serial PRIMARY KEY, token text NOT NULL, at timestamptz NOT NULL DEFAULT now())');
    const inserted = await client.query('INSERT INTO vcap_app_visits (token) VALUES ($1) RETURNING id', [token]);
    const read = await client.query('SELECT token FROM vcap_app_visits WHERE id = $1', [inserted.rows[0].id]);
    if (read.rows[0]?.token !== token) throw new Error('PostgreSQL gave back something else than was written');
    return `row ${inserted.rows[0].id} of vcap_app_visits`;
  } finally {
    await client.end();
  }
}

async function useRedis(service, token) {
  const redis = new Redis(service.credentials.uri, { lazyConnect: true, connectTimeout: 10_000, maxRetriesPerRequest: 1, retryStrategy: () => null });
  redis.on('error', () => {}); // the failing command reports the reason
  await redis.connect();
  try {
    const key = `vcap-app:visit:${token}`;
    await redis.set(key, token, 'EX', 3600);
    if ((await redis.get(key)) !== token) throw new Error('Redis gave back something else than was written');
    return `key ${key}`;
  } finally {
    redis.disconnect();
  }
}

try {
  const token = randomUUID();
  const postgres = findService('postgresql', 'postgres');
  const redis = findService('redis');
  console.log(`postgresql (${postgres.name}, plan ${postgres.plan}): wrote and read back ${await usePostgres(postgres, token)}`);
  console.log(`redis (${redis.name}, plan ${redis.plan}): wrote and read back ${await useRedis(redis, token)}`);
  console.log('ok');
} catch (error) {
  console.error(`vcap-app: ${error.message}`);
  process.exitCode = 1;
}
