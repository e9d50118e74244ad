import test from 'ava';
import pg from 'pg';
import { brokerObjects, engine, PG, redisKeys, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { pgQuery as query } from './helpers/engine-watch.js';
import { provisionBody } from './helpers/osb-client.js';

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(1);
});
test.after.always(async () => {
  await env?.stop();
});

test('full PostgreSQL lifecycle through bound credentials', async (t) => {
  const { client, config } = env;
  const id = uniqueId();

  const accepted = await client.provision(id, provisionBody(PG.service, PG.small, { parameters: { database: 'orders' } }));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  t.truthy(accepted.body.operation);
  t.true(accepted.body.dashboard_url.startsWith(`${env.broker.publicUrl}/dashboard/instances/${id}?token=`), accepted.body.dashboard_url);
  t.regex(accepted.headers.get('content-type') ?? '', /application\/json/);

  const done = await client.waitForInstance(id, accepted.body.operation);
  t.deepEqual(done.body, { state: 'succeeded', description: 'The service instance is ready.' });

  const fetched = await client.request('GET', `/v2/service_instances/${id}`);
  t.is(fetched.status, 200);
  t.is(fetched.body.plan_id, PG.small);
  t.is(fetched.body.parameters.database, 'orders');
  t.deepEqual(fetched.body.maintenance_info, { version: '15.0.2' });

  // The container carries its labels, limits and security options.
  const { containers, volumes } = await brokerObjects(config.brokerId);
  t.is(containers.length, 1);
  t.is(volumes.length, 1);
  const container = containers[0]!;
  t.is(container.labels['io.osb-broker.instance'], id);
  t.is(container.labels['io.osb-broker.service'], PG.service);
  t.is(container.labels['io.osb-broker.plan'], PG.small);
  const hostPort = container.hostPort!;
  t.true(hostPort >= config.portRange.first && hostPort <= config.portRange.last);

  // Two bindings, distinct users, sharing tables.
  const bindBody = { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } };
  const first = await client.bind(id, 'b-one', bindBody);
  t.is(first.status, 201, JSON.stringify(first.body));
  const second = await client.bind(id, 'b-two', { ...bindBody, bind_resource: { app_guid: 'app-2' } });
  t.is(second.status, 201);
  const one = first.body.credentials;
  const two = second.body.credentials;
  t.not(one.username, two.username);
  t.not(one.password, two.password);
  t.is(one.port, hostPort);
  t.is(typeof one.port, 'number');
  t.is(one.host, '127.0.0.1');
  t.is(one.hostname, '127.0.0.1');
  t.is(one.name, 'orders');
  t.is(one.database, 'orders');
  t.is(one.uri, `postgres://${encodeURIComponent(one.username)}:${encodeURIComponent(one.password)}@127.0.0.1:${hostPort}/orders`);
  t.is(one.jdbcUrl, `jdbc:postgresql://127.0.0.1:${hostPort}/orders?user=${encodeURIComponent(one.username)}&password=${encodeURIComponent(one.password)}`);
  t.deepEqual(first.body.endpoints, [{ host: '127.0.0.1', ports: [String(hostPort)], protocol: 'tcp' }]);

  // The same bind again answers 200 with the same credentials.
  const again = await client.bind(id, 'b-one', bindBody);
  t.is(again.status, 200);
  t.deepEqual(again.body.credentials, one);
  const fetchedBinding = await client.request('GET', `/v2/service_instances/${id}/service_bindings/b-one`);
  t.is(fetchedBinding.status, 200);
  t.deepEqual(fetchedBinding.body.credentials, one);

  // The listing for clients that work with names: instance_name and binding_name from the contexts, no secrets.
  t.is((await client.request('GET', '/broker/v1/instances', undefined, { auth: null })).status, 401);
  await client.bind(id, 'b-named', { ...bindBody, context: { platform: 'osb-docker-cli', binding_name: 'reporting' } });
  const listing = await client.request('GET', '/broker/v1/instances', undefined, { version: null });
  t.is(listing.status, 200);
  const listed = listing.body.instances.find((instance: { id: string }) => instance.id === id);
  t.like(listed, { name: 'my-db', service_name: 'postgresql', plan_name: 'small', state: 'ready', service_id: PG.service, plan_id: PG.small });
  t.deepEqual(
    listed.bindings.map((binding: { id: string; name?: string }) => [binding.id, binding.name]),
    [
      ['b-one', undefined],
      ['b-two', undefined],
      ['b-named', 'reporting'],
    ],
  );
  t.true(listed.dashboard_url.includes('?token='));
  t.false(JSON.stringify(listing.body).includes(one.password));
  t.is((await client.unbind(id, 'b-named', PG.service, PG.small)).status, 200);

  await query(one.uri, 'CREATE TABLE items (id serial primary key, name text)');
  await query(one.uri, "INSERT INTO items (name) VALUES ('from one')");
  await query(two.uri, "INSERT INTO items (name) VALUES ('from two')");
  const rows = await query(two.uri, 'SELECT name FROM items ORDER BY id');
  t.deepEqual(
    rows.rows.map((row) => row.name),
    ['from one', 'from two'],
  );
  await query(two.uri, "UPDATE items SET name = 'changed by two' WHERE name = 'from one'");
  t.is((await query(one.uri, 'SELECT count(*)::int AS n FROM items WHERE name = $1', ['changed by two'])).rows[0].n, 1);

  // Unbind revokes exactly that user, ending its open session too.
  const session = new pg.Client({ connectionString: one.uri });
  await session.connect();
  session.on('error', () => {});
  const unbound = await client.unbind(id, 'b-one', PG.service, PG.small);
  t.is(unbound.status, 200);
  t.deepEqual(unbound.body, {});
  await t.throwsAsync(() => session.query('SELECT 1'));
  await t.throwsAsync(() => query(one.uri, 'SELECT 1'), { message: /password authentication failed|does not exist/ });
  t.is((await query(two.uri, 'SELECT count(*)::int AS n FROM items')).rows[0].n, 2);
  const unboundAgain = await client.unbind(id, 'b-one', PG.service, PG.small);
  t.is(unboundAgain.status, 410);
  t.is((await client.request('GET', `/v2/service_instances/${id}/service_bindings/b-one`)).status, 404);

  // Deprovision removes container, volume, bindings and the port reservation.
  const deleting = await client.deprovision(id, PG.service, PG.small);
  t.is(deleting.status, 202);
  const deleted = await client.waitForInstance(id, deleting.body.operation);
  t.is(deleted.body.state, 'succeeded');
  const after = await brokerObjects(config.brokerId);
  t.deepEqual(after, { containers: [], volumes: [] });
  t.is(await engine.inspectContainer(container.name), undefined);
  t.deepEqual(await redisKeys(env.redisUrl, `osb:${config.brokerId}:port:*`), []);
  t.deepEqual(await redisKeys(env.redisUrl, `osb:${config.brokerId}:binding:*`), []);
  await t.throwsAsync(() => query(two.uri, 'SELECT 1'));

  // No password, of the instance or its bindings, ever reaches the logs.
  const logged = env.logs.join('');
  t.true(logged.includes(id), 'the logs were captured');
  for (const secret of [one.password, two.password, one.uri, two.jdbcUrl]) t.false(logged.includes(secret));

  // The tombstone answers "succeeded" for a while; the instance itself is gone.
  t.is((await client.lastOperation(id)).body.state, 'succeeded');
  t.is((await client.request('GET', `/v2/service_instances/${id}`)).status, 404);
  t.is((await client.deprovision(id, PG.service, PG.small)).status, 410);
});
