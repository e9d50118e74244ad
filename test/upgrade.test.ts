import test from 'ava';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { PACKAGE_ROOT } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { startBroker, type RunningBroker } from '../src/server.js';
import { brokerObjects, engine, PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { OsbClient, provisionBody } from './helpers/osb-client.js';

// A new maintenance_info version in the catalog is an upgrade path: the instance's container is replaced on the
// new image while its volume (data), port and bindings stay.
let env: TestBroker;
let upgraded: RunningBroker | undefined;
const prefix = `osb-upgrade-test-${process.pid}/`;

test.before(async () => {
  env = await startTestBroker(8, { imagePrefix: prefix });
});
test.after.always(async () => {
  await upgraded?.close();
  await env?.stop();
  for (const version of ['15.0.2', '15.0.3']) {
    try {
      execFileSync('docker', ['rmi', '--no-prune', `${prefix}postgresql:${version}`], { stdio: 'ignore' });
    } catch {
      // Never built.
    }
  }
});

function catalogAtVersion(version: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'catalog-'));
  cpSync(path.join(PACKAGE_ROOT, 'catalog'), dir, { recursive: true });
  const file = path.join(dir, 'postgresql', 'service.json');
  const service = JSON.parse(readFileSync(file, 'utf8'));
  service.maintenance_info.version = version;
  writeFileSync(file, JSON.stringify(service));
  return dir;
}

test('a maintenance upgrade replaces the container on the new image and keeps data, port and bindings', async (t) => {
  const id = uniqueId();
  const first = env.client;
  const accepted = await first.provision(id, provisionBody(PG.service, PG.small));
  t.is((await first.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const bound = await first.bind(id, 'keeper', { service_id: PG.service, plan_id: PG.small });
  t.is(bound.status, 201);
  const { uri, port, ca_certificate: ca } = bound.body.credentials;
  // With `ssl`, pg refuses a server that does not speak TLS or whose certificate the CA and the host name do not verify.
  const db = async (sql: string, tls = false) => {
    const client = new pg.Client({ connectionString: uri, ...(tls ? { ssl: { ca: ca as string } } : {}) });
    await client.connect();
    try {
      return (await client.query(sql)).rows;
    } finally {
      await client.end();
    }
  };
  await db("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('before the upgrade')");
  const before = (await brokerObjects(env.config.brokerId)).containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;

  // The operator ships a new catalog version and restarts the broker.
  await env.broker.close();
  upgraded = await startBroker({ ...env.config, catalogDir: catalogAtVersion('15.0.3') }, createLogger('silent'));
  const client = new OsbClient(upgraded.url, env.config.username, env.config.password);
  const catalog = await client.request('GET', '/v2/catalog');
  const postgres = catalog.body.services.find((service: { name: string }) => service.name === 'postgresql');
  t.is(postgres.plans[0].maintenance_info.version, '15.0.3');
  t.is((await client.request('GET', `/v2/service_instances/${id}`)).body.maintenance_info.version, '15.0.2');

  const stale = await client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: PG.service,
    maintenance_info: { version: '15.0.2' },
  });
  t.is(stale.status, 422);
  t.is(stale.body.error, 'MaintenanceInfoConflict');

  const upgrade = await client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: PG.service,
    maintenance_info: { version: '15.0.3' },
  });
  t.is(upgrade.status, 202);
  const done = await client.waitForInstance(id, upgrade.body.operation);
  t.is(done.body.state, 'succeeded', done.body.description);

  t.is((await client.request('GET', `/v2/service_instances/${id}`)).body.maintenance_info.version, '15.0.3');
  const after = (await brokerObjects(env.config.brokerId)).containers.find((c) => c.labels['io.osb-broker.instance'] === id)!;
  t.not(after.id, before.id, 'the container was replaced');
  t.is(after.image, `${prefix}postgresql:15.0.3`);
  t.is(after.hostPort, port, 'the port stayed');
  t.deepEqual(await db('SELECT note FROM kept'), [{ note: 'before the upgrade' }], 'the data and the binding survived');
  t.deepEqual(await db('SELECT note FROM kept', true), [{ note: 'before the upgrade' }], 'the new container has its certificate: verified TLS');
  t.truthy(await engine.inspectContainer(after.name));
});
