import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

// An image the engine does not have is built by the first provision that needs it, and the operation says so.
// A fresh image prefix makes the tag missing; the engine's build cache keeps the build short.
const prefix = `osb-build-test-${randomBytes(3).toString('hex')}/`;
let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(4, { imagePrefix: prefix });
});
test.after.always(async () => {
  await env?.stop();
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${prefix}postgresql:15.0.2`], { stdio: 'ignore' });
  } catch {
    // Not built: nothing to remove.
  }
});

test('a missing image is built during provisioning, with a description that says so', async (t) => {
  const { client } = env;
  const id = uniqueId();
  const accepted = await client.provision(id, provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202);
  const descriptions = new Set<string>();
  for (;;) {
    const reply = await client.lastOperation(id, accepted.body.operation);
    descriptions.add(reply.body.description);
    if (reply.body.state !== 'in progress') {
      t.is(reply.body.state, 'succeeded', reply.body.description);
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  t.true(
    [...descriptions].some((description) => description.startsWith(`Building image ${prefix}postgresql:15.0.2`)),
    [...descriptions].join(' | '),
  );
  const labels = JSON.parse(execFileSync('docker', ['image', 'inspect', '--format', '{{json .Config.Labels}}', `${prefix}postgresql:15.0.2`]).toString());
  t.regex(labels['io.osb-broker.recipe'], /^[0-9a-f]{16}$/);
});
