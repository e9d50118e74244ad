import test from 'ava';
import pg from 'pg';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { brokerObjects, engine, PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { catalogCopy } from './helpers/catalog.js';

// Every row of the status matrix in the OSB checklist, against the real engine.
// The PostgreSQL recipe with a configure script that takes 1.5 s more, so that the requests made "during an update"
// really meet a running update. A prefix of its own keeps the shipped image untouched.
const prefix = `osb-matrix-test-${process.pid}/`;
const slowConfigureCatalog = () =>
  catalogCopy('postgresql', {
    files: (folder) => {
      const script = path.join(folder, 'scripts', 'configure');
      const [shebang, ...rest] = readFileSync(script, 'utf8').split('\n');
      writeFileSync(script, [shebang, 'sleep 1.5', ...rest].join('\n'));
    },
  });

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(2, { tombstoneSeconds: 3, catalogDir: slowConfigureCatalog(), imagePrefix: prefix });
});
test.after.always(async () => {
  await env?.stop();
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${prefix}postgresql:15.0.2`], { stdio: 'ignore' });
  } catch {
    // Never built.
  }
});

const instancePath = (id: string) => `/v2/service_instances/${id}`;
const bindingPath = (id: string, bindingId: string) => `/v2/service_instances/${id}/service_bindings/${bindingId}`;
const query = `service_id=${PG.service}&plan_id=${PG.small}`;

async function ready(id: string, extra: Record<string, unknown> = {}) {
  const reply = await env.client.provision(id, provisionBody(PG.service, PG.small, extra));
  const done = await env.client.waitForInstance(id, reply.body.operation);
  if (done.body.state !== 'succeeded') throw new Error(`provision failed: ${JSON.stringify(done.body)}`);
}

test('provision: 400s, 422s, 202, repeats in progress and finished, 409 conflicts', async (t) => {
  const { client } = env;
  const id = uniqueId();
  const body = provisionBody(PG.service, PG.small);
  const path = `${instancePath(id)}?accepts_incomplete=true`;

  for (const [what, bad] of [
    ['missing service_id', { ...body, service_id: undefined }],
    ['empty service_id', { ...body, service_id: '' }],
    ['missing plan_id', { ...body, plan_id: undefined }],
    ['empty plan_id', { ...body, plan_id: '' }],
    ['unknown service', { ...body, service_id: 'no-such-service' }],
    ['unknown plan', { ...body, plan_id: 'no-such-plan' }],
    ['missing organization_guid', { ...body, organization_guid: undefined }],
    ['missing space_guid', { ...body, space_guid: undefined }],
    ['unknown parameter', { ...body, parameters: { nonsense: 1 } }],
    ['parameter of the wrong type', { ...body, parameters: { log_min_duration_statement: 'slow' } }],
    ['parameter against its pattern', { ...body, parameters: { database: 'Robert"); DROP' } }],
    ['parameters not an object', { ...body, parameters: [1] }],
  ] as const) {
    const reply = await client.request('PUT', path, bad);
    t.is(reply.status, 400, what);
    t.truthy(reply.body.error, what);
    t.truthy(reply.body.description, what);
  }
  const async = await client.provision(id, body, false);
  t.is(async.status, 422);
  t.is(async.body.error, 'AsyncRequired');
  const maintenance = await client.provision(id, { ...body, maintenance_info: { version: '0.0.1' } });
  t.is(maintenance.status, 422);
  t.is(maintenance.body.error, 'MaintenanceInfoConflict');
  t.deepEqual(await objectsOf(id), { containers: [], volumes: [] }, 'no 4xx created anything');

  // maintenance_info without a version counts as absent; unknown fields are ignored.
  const accepted = await client.provision(id, { ...body, maintenance_info: {}, vendor_extension: { x: 1 } });
  t.is(accepted.status, 202);
  const repeated = await client.provision(id, body);
  t.is(repeated.status, 202);
  t.is(repeated.body.operation, accepted.body.operation);
  t.is((await client.request('GET', instancePath(id))).status, 404, 'fetch answers 404 while provisioning');
  const bindEarly = await client.bind(id, 'early', { service_id: PG.service, plan_id: PG.small });
  t.is(bindEarly.status, 422);
  t.is(bindEarly.body.error, 'ConcurrencyError');
  const polled = await client.lastOperation(id, accepted.body.operation);
  t.is(polled.status, 200);
  t.is(polled.body.state, 'in progress');
  t.truthy(polled.body.description);
  t.is(polled.headers.get('retry-after'), '1');

  for (const [what, other] of [
    ['other plan', { ...body, plan_id: PG.medium }],
    ['other organization', { ...body, organization_guid: 'org-2' }],
    ['other space', { ...body, space_guid: 'space-2' }],
    ['other parameters', { ...body, parameters: { database: 'other' } }],
  ] as const) {
    const reply = await client.provision(id, other);
    t.is(reply.status, 409, what);
    t.is(reply.body.error, 'Conflict');
  }

  t.is((await client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const again = await client.provision(id, body);
  t.is(again.status, 200);
  t.truthy(again.body.dashboard_url);
  t.is(again.body.operation, undefined);
  t.is((await client.provision(id, body, false)).status, 200);
  t.is((await client.provision(id, { ...body, plan_id: PG.medium })).status, 409);

  // last_operation: an unknown operation value falls back to the latest; unknown ids are 400; unknown instances 404.
  t.is((await client.lastOperation(id, 'not-an-operation')).body.state, 'succeeded');
  t.is((await client.request('GET', `${instancePath(id)}/last_operation?service_id=nope`)).status, 400);
  t.is((await client.lastOperation(uniqueId())).status, 404);
  t.is((await objectsOf(id)).containers.length, 1);
});

test('update: plan change applies limits live, parameters apply or are refused, concurrency and version rules', async (t) => {
  const { client } = env;
  const id = uniqueId();
  await ready(id);
  const before = (await objectsOf(id)).containers[0]!;
  const startedBefore = (await engine.inspectContainer(before.name))!.startedAt;
  const patch = (body: Record<string, unknown>, acceptsIncomplete = true) =>
    client.request('PATCH', `${instancePath(id)}${acceptsIncomplete ? '?accepts_incomplete=true' : ''}`, body);

  t.is((await client.request('PATCH', `${instancePath(uniqueId())}?accepts_incomplete=true`, { service_id: PG.service })).status, 404);
  t.is((await patch({ plan_id: PG.medium })).status, 400, 'service_id is required');
  t.is((await patch({ service_id: PG.service, plan_id: 'nope' })).status, 400);
  t.is((await patch({ service_id: PG.service, parameters: { nonsense: true } })).status, 400);
  const fixed = await patch({ service_id: PG.service, parameters: { database: 'renamed' } });
  t.is(fixed.status, 422);
  t.is(fixed.body.error, 'ParameterNotUpdatable');
  t.regex(fixed.body.description, /database cannot be changed/);
  const conflict = await patch({ service_id: PG.service, plan_id: PG.medium, maintenance_info: { version: '9.9.9' } });
  t.is(conflict.status, 422);
  t.is(conflict.body.error, 'MaintenanceInfoConflict');
  const needsAsync = await patch({ service_id: PG.service, plan_id: PG.medium }, false);
  t.is(needsAsync.status, 422);
  t.is(needsAsync.body.error, 'AsyncRequired');
  t.is((await client.request('GET', instancePath(id))).body.plan_id, PG.small, 'nothing changed on any 4xx');

  // A no-op update is 200 and says the dashboard link again (what Cloud Foundry stores: `cf update-service -c '{}'`).
  const noOp = await patch({ service_id: PG.service }, false);
  t.is(noOp.status, 200);
  t.deepEqual(Object.keys(noOp.body), ['dashboard_url'], 'a no-op update is 200 with the dashboard link alone');
  t.is(noOp.body.dashboard_url, (await client.request('GET', instancePath(id))).body.dashboard_url);
  const contextOnly = await patch({ service_id: PG.service, context: { platform: 'cloudfoundry', instance_name: 'renamed-db' } }, false);
  t.is(contextOnly.status, 200);

  const change = { service_id: PG.service, plan_id: PG.medium, parameters: { log_min_duration_statement: 250 }, previous_values: { plan_id: PG.small } };
  const accepted = await patch(change);
  t.is(accepted.status, 202);
  t.truthy(accepted.body.operation);
  const same = await patch(change);
  t.is(same.status, 202);
  t.is(same.body.operation, accepted.body.operation);
  const other = await patch({ service_id: PG.service, parameters: { log_min_duration_statement: 5 } });
  t.is(other.status, 422);
  t.is(other.body.error, 'ConcurrencyError');
  const fetchDuring = await client.request('GET', instancePath(id));
  t.is(fetchDuring.status, 422);
  t.is(fetchDuring.body.error, 'ConcurrencyError');
  const deleteDuring = await client.deprovision(id, PG.service, PG.small);
  t.is(deleteDuring.status, 422);
  t.is(deleteDuring.body.error, 'ConcurrencyError');
  const bindDuring = await client.bind(id, 'during', { service_id: PG.service, plan_id: PG.small });
  t.is(bindDuring.status, 422);
  t.is(bindDuring.body.error, 'ConcurrencyError');

  const done = await client.waitForInstance(id, accepted.body.operation);
  t.deepEqual(done.body, { state: 'succeeded', description: 'The service instance is updated.' });
  const fetched = await client.request('GET', instancePath(id));
  t.is(fetched.body.plan_id, PG.medium);
  t.is(fetched.body.parameters.log_min_duration_statement, 250);

  // The same container, not restarted, now runs with the medium plan's limits.
  const inspect = JSON.parse(await dockerInspect(before.name));
  t.is(inspect.Id, before.id);
  t.is(inspect.State.StartedAt, startedBefore);
  t.is(inspect.HostConfig.Memory, 1024 * 1024 * 1024);
  t.is(inspect.HostConfig.NanoCpus, 1e9);
  t.is(inspect.HostConfig.PidsLimit, 256);
  t.is(inspect.RestartCount, 0);

  const bound = await client.bind(id, 'reader', { service_id: PG.service, plan_id: PG.medium });
  t.is(bound.status, 201);
  const pgClient = new pg.Client({ connectionString: bound.body.credentials.uri });
  await pgClient.connect();
  t.is((await pgClient.query('SHOW log_min_duration_statement')).rows[0].log_min_duration_statement, '250ms');
  await pgClient.end();
  const unbound = await client.unbind(id, 'reader', PG.service, PG.medium);
  t.is(unbound.status, 200);
  const withOldPlan = await client.deprovision(id, PG.service, PG.small);
  t.is(withOldPlan.status, 202, 'a platform still holding the previous plan id can deprovision');
  t.is((await client.waitForInstance(id, withOldPlan.body.operation)).body.state, 'succeeded');
});

test('deprovision: 400s, 422 AsyncRequired, 202, repeat in progress, 410 after, tombstone then 404', async (t) => {
  const { client } = env;
  const id = uniqueId();
  await ready(id);
  t.is((await client.request('DELETE', `${instancePath(id)}?plan_id=${PG.small}&accepts_incomplete=true`)).status, 400);
  t.is((await client.request('DELETE', `${instancePath(id)}?service_id=${PG.service}&accepts_incomplete=true`)).status, 400);
  t.is((await client.request('DELETE', `${instancePath(id)}?service_id=${PG.service}&plan_id=&accepts_incomplete=true`)).status, 400);
  t.is((await client.request('DELETE', `${instancePath(id)}?service_id=${PG.service}&plan_id=nope&accepts_incomplete=true`)).status, 400);
  t.is((await client.deprovision(uniqueId(), PG.service, PG.small)).status, 410);
  const sync = await client.deprovision(id, PG.service, PG.small, false);
  t.is(sync.status, 422);
  t.is(sync.body.error, 'AsyncRequired');

  const accepted = await client.deprovision(id, PG.service, PG.small);
  t.is(accepted.status, 202);
  const repeated = await client.deprovision(id, PG.service, PG.small);
  t.is(repeated.status, 202);
  t.is(repeated.body.operation, accepted.body.operation);
  t.is((await client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');
  const goneReply = await client.deprovision(id, PG.service, PG.small);
  t.is(goneReply.status, 410);
  t.deepEqual(goneReply.body, {});
  t.is((await client.lastOperation(id)).body.state, 'succeeded');
  await new Promise((resolve) => setTimeout(resolve, 3500));
  t.is((await client.lastOperation(id)).status, 404, 'the tombstone expires');
});

test('bind and unbind: sync and async, repeats, conflicts, 410 and binding last_operation', async (t) => {
  const { client } = env;
  const id = uniqueId();
  await ready(id);
  const body = { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'app-1' } };

  for (const [what, bad, binding] of [
    ['missing service_id', { ...body, service_id: undefined }, 'b'],
    ['missing plan_id', { ...body, plan_id: '' }, 'b'],
    ['unknown plan', { ...body, plan_id: 'nope' }, 'b'],
    ['binding parameters not in the schema', { ...body, parameters: { admin: true } }, 'b'],
  ] as const) {
    const reply = await client.bind(id, binding, bad);
    t.is(reply.status, 400, what);
  }
  t.is((await client.bind(uniqueId(), 'b', body)).status, 400, 'unknown instance');

  const async = await client.bind(id, 'async-1', body, true);
  t.is(async.status, 202);
  t.truthy(async.body.operation);
  t.is(async.body.credentials, undefined, 'an async bind response carries no credentials');
  const repeat = await client.bind(id, 'async-1', body, true);
  t.true(repeat.status === 202 ? repeat.body.operation === async.body.operation : repeat.status === 200, `repeat answered ${repeat.status}`);
  t.is((await client.waitForBinding(id, 'async-1')).body.state, 'succeeded');
  const fetched = await client.request('GET', bindingPath(id, 'async-1'));
  t.is(fetched.status, 200);
  t.truthy(fetched.body.credentials.password);
  const finished = await client.bind(id, 'async-1', body, true);
  t.is(finished.status, 200);
  t.deepEqual(finished.body.credentials, fetched.body.credentials);
  const conflict = await client.bind(id, 'async-1', { ...body, bind_resource: { app_guid: 'app-2' } });
  t.is(conflict.status, 409);

  t.is((await client.request('GET', bindingPath(id, 'never'))).status, 404);
  t.is((await client.request('GET', `${bindingPath(id, 'never')}/last_operation`)).status, 404);
  t.is((await client.unbind(id, 'never', PG.service, PG.small)).status, 410);
  t.is((await client.request('DELETE', `${bindingPath(id, 'async-1')}?plan_id=${PG.small}`)).status, 400);

  const unbinding = await client.unbind(id, 'async-1', PG.service, PG.small, true);
  t.is(unbinding.status, 202);
  t.truthy(unbinding.body.operation);
  t.is((await client.waitForBinding(id, 'async-1')).body.state, 'succeeded');
  t.is((await client.request('GET', bindingPath(id, 'async-1'))).status, 404);
  t.is((await client.unbind(id, 'async-1', PG.service, PG.small, true)).status, 410);
  await t.throwsAsync(async () => {
    const dead = new pg.Client({ connectionString: fetched.body.credentials.uri });
    await dead.connect();
    await dead.end();
  });
});

test('fetch instance and binding before and after', async (t) => {
  const { client } = env;
  t.is((await client.request('GET', instancePath(uniqueId()))).status, 404);
  t.is((await client.request('GET', bindingPath(uniqueId(), 'b'))).status, 404);
  const id = uniqueId();
  await ready(id, { parameters: { database: 'shop' } });
  const fetched = await client.request('GET', `${instancePath(id)}?${query}`);
  t.is(fetched.status, 200);
  const { dashboard_url: dashboardUrl, ...rest } = fetched.body;
  // The parameters as applied: the schema's defaults filled in.
  t.deepEqual(rest, {
    service_id: PG.service,
    plan_id: PG.small,
    parameters: { database: 'shop', require_tls: false },
    maintenance_info: { version: '15.0.2' },
  });
  t.true(dashboardUrl.startsWith(`${env.broker.publicUrl}/dashboard/instances/${id}?token=`), 'a fresh dashboard link with its own token');
});

async function objectsOf(id: string) {
  const { containers, volumes } = await brokerObjects(env.config.brokerId);
  const mine = (labels: Record<string, string>) => labels['io.osb-broker.instance'] === id;
  return { containers: containers.filter((c) => mine(c.labels)), volumes: volumes.filter((v) => mine(v.labels)) };
}

function dockerInspect(name: string): Promise<string> {
  return import('node:child_process').then(
    ({ execFile }) =>
      new Promise((resolve, reject) => {
        execFile('docker', ['inspect', '--type', 'container', '--format', '{{json .}}', name], (error, stdout) =>
          error ? reject(new Error(error.message, { cause: error })) : resolve(stdout),
        );
      }),
  );
}
