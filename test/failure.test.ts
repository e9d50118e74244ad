import test from 'ava';
import { cpSync, writeFileSync, appendFileSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { PACKAGE_ROOT } from '../src/config.js';
import { brokerObjects, PG, redisKeys, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { catalogCopy } from './helpers/catalog.js';

// A provision that fails reports "failed" with a clear reason and removes what it made; the platform's
// orphan-mitigation DELETE then succeeds. Two real failures: nothing answers on the published port, and an
// image recipe that does not build.
const prefix = `osb-failure-test-${process.pid}/`;
let env: TestBroker;

function brokenCatalog(): string {
  let service: any;
  const dir = catalogCopy('postgresql', {
    edit: (edited) => {
      edited.container.port = 5999; // nothing listens there inside the container
      service = edited;
    },
  });
  // A second offering whose image recipe fails to build.
  cpSync(path.join(PACKAGE_ROOT, 'catalog', 'postgresql'), path.join(dir, 'unbuildable'), { recursive: true });
  const other = {
    ...service,
    offering: {
      ...service.offering,
      id: '6a0b7f7e-0000-4000-8000-000000000001',
      name: 'unbuildable',
      plans: service.offering.plans.map((plan: any, index: number) => ({ ...plan, id: `6a0b7f7e-0000-4000-8000-00000000001${index}` })),
    },
  };
  writeFileSync(path.join(dir, 'unbuildable', 'service.json'), JSON.stringify(other));
  appendFileSync(path.join(dir, 'unbuildable', 'Dockerfile'), '\nRUN echo "this recipe is broken on purpose" >&2 && false\n');
  return dir;
}

test.before(async () => {
  env = await startTestBroker(9, { catalogDir: brokenCatalog(), imagePrefix: prefix });
});
test.after.always(async () => {
  await env?.stop();
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${prefix}postgresql:15.0.2`], { stdio: 'ignore' });
  } catch {
    // Never built.
  }
});

async function assertFailedAndCleanedUp(t: import('ava').ExecutionContext, id: string, serviceId: string, planId: string, reason: RegExp) {
  const { client, config } = env;
  const accepted = await client.provision(id, provisionBody(serviceId, planId));
  t.is(accepted.status, 202);
  const done = await client.waitForInstance(id, accepted.body.operation);
  t.is(done.body.state, 'failed');
  t.regex(done.body.description, reason);
  t.is(done.body.instance_usable, undefined, 'instance_usable is only for update and deprovision');
  const mine = (labels: Record<string, string>) => labels['io.osb-broker.instance'] === id;
  const left = await brokerObjects(config.brokerId);
  t.deepEqual([...left.containers.filter((c) => mine(c.labels)), ...left.volumes.filter((v) => mine(v.labels))], [], 'the failure removed what it made');
  t.deepEqual(await redisKeys(env.redisUrl, `osb:${config.brokerId}:port:*`), []);
  t.is((await client.request('GET', `/v2/service_instances/${id}`)).status, 404);

  // Orphan mitigation: the platform deletes the failed instance; that succeeds and is idempotent.
  const deleting = await client.deprovision(id, serviceId, planId);
  t.is(deleting.status, 202);
  t.is((await client.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');
  t.is((await client.deprovision(id, serviceId, planId)).status, 410);
}

test.serial('nothing answering on the published port fails the provision and leaves nothing', async (t) => {
  await assertFailedAndCleanedUp(t, uniqueId(), PG.service, PG.small, /^Provisioning failed: nothing answers on the published port 127\.0\.0\.1:\d+$/);
});

test.serial('an image that does not build fails the provision with the build error', async (t) => {
  await assertFailedAndCleanedUp(
    t,
    uniqueId(),
    '6a0b7f7e-0000-4000-8000-000000000001',
    '6a0b7f7e-0000-4000-8000-000000000010',
    /^Provisioning failed: building .*unbuildable:15\.0\.2 failed: .*returned a non-zero code: 1/,
  );
});
