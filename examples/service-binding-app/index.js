// Finds a PostgreSQL and a Redis in $SERVICE_BINDING_ROOT (the Service Binding for Kubernetes projection that a
// ServiceBinding resource, a mounted Secret or `osb-docker env --service-binding-root` makes), connects to each with
// the options kube-service-bindings maps the files to, writes and reads a value back. Exits 0 when both worked.
import { randomUUID } from 'node:crypto';
import serviceBindings from 'kube-service-bindings';
import pg from 'pg';
import { Redis } from 'ioredis';

// kube-service-bindings 2.1.0 finds a type by itself only when the first folder of the root has that type (for any
// other it reports "No Binding Found"), so the app reads every binding's entries once (getBinding() without a
// type) and hands the one it wants back as bindingData, which maps it for the client all the same.
const bindings = serviceBindings.getBinding();

/** The client options of the first binding of this servicebinding.io type, as kube-service-bindings maps them. */
function optionsFor(type, library, client) {
  const entries = bindings.find((binding) => binding.type === type);
  if (!entries) throw new Error(`no ${type} binding in ${process.env.SERVICE_BINDING_ROOT} (types: ${bindings.map((binding) => binding.type).join(', ') || 'none'})`);
  return serviceBindings.getBinding(library, client, { bindingData: entries });
}

async function usePostgres(token) {
  // user, password, host, port, database (and ssl.ca from root.crt when the binding has a CA)
  const client = new pg.Client({ ...optionsFor('postgresql', 'POSTGRESQL', 'pg'), connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    await client.query('CREATE TABLE IF NOT EXISTS binding_app_visits (id serial PRIMARY KEY, token text NOT NULL)');
    const inserted = await client.query('INSERT INTO binding_app_visits (token) VALUES ($1) RETURNING id', [token]);
    const read = await client.query('SELECT token FROM binding_app_visits WHERE id = $1', [inserted.rows[0].id]);
    if (read.rows[0]?.token !== token) throw new Error('PostgreSQL gave back something else than was written');
    return `row ${inserted.rows[0].id} of binding_app_visits`;
  } finally {
    await client.end();
  }
}

async function useRedis(token) {
  // host, port, username, password: the binding's own ACL user
  const { host, port, username, password } = optionsFor('redis', 'REDIS', 'ioredis');
  const redis = new Redis({ host, port: Number(port), username, password, lazyConnect: true, connectTimeout: 10_000, maxRetriesPerRequest: 1, retryStrategy: () => null });
  redis.on('error', () => {}); // the failing command reports the reason
  await redis.connect();
  try {
    const key = `binding-app:visit:${token}`;
    await redis.set(key, token, 'EX', 3600);
    if ((await redis.get(key)) !== token) throw new Error('Redis gave back something else than was written');
    return `key ${key}`;
  } finally {
    redis.disconnect();
  }
}

try {
  const token = randomUUID();
  console.log(`postgresql: wrote and read back ${await usePostgres(token)}`);
  console.log(`redis: wrote and read back ${await useRedis(token)}`);
  console.log('ok');
} catch (error) {
  console.error(`service-binding-app: ${error.message}`);
  process.exitCode = 1;
}
