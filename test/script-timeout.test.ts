import test from 'ava';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { engine, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { catalogCopy, offeringIds } from './helpers/catalog.js';

// A lifecycle script that overruns its time-out is stopped inside the container, not just abandoned by the broker:
// a copy of the Redis offering whose bind script hangs and even ignores SIGTERM.
const prefix = `osb-timeout-test-${process.pid}/`;
let env: TestBroker;
let offering: { id: string; plan: string };

function hangingCatalog(): string {
  const { service, plan } = offeringIds('redis');
  offering = { id: service, plan };
  return catalogCopy('redis', {
    files: (folder) => writeFileSync(path.join(folder, 'scripts', 'bind'), "#!/usr/bin/env bash\ntrap '' TERM INT\nsleep 600\n", { mode: 0o755 }),
  });
}

test.before(async () => {
  env = await startTestBroker(19, { catalogDir: hangingCatalog(), imagePrefix: prefix, scriptTimeoutSeconds: 3 });
});
test.after.always(async () => {
  await env?.stop();
  try {
    execFileSync('docker', ['rmi', '--no-prune', `${prefix}redis:7.0.2`], { stdio: 'ignore' });
  } catch {
    // Never built.
  }
});

test('a bind script past its time-out fails the bind with a clear reason and leaves no process behind', async (t) => {
  const { client } = env;
  const id = uniqueId();
  const accepted = await client.provision(id, provisionBody(offering.id, offering.plan));
  t.is((await client.waitForInstance(id, accepted.body.operation)).body.state, 'succeeded');

  const started = Date.now();
  const bind = await client.bind(id, 'b1', { service_id: offering.id, plan_id: offering.plan });
  t.is(bind.status, 503);
  t.regex(bind.body.description, /bind script did not finish within 3 s and was stopped/);
  t.true(Date.now() - started < 20_000, 'the broker does not wait for the script beyond time-out and kill grace');

  const container = (await engine.listContainers({ 'io.osb-broker.instance': id }))[0]!;
  const processes = await engine.top(container.name);
  const commands = processes.processes.map((row) => row.at(-1) ?? '');
  t.false(
    commands.some((command) => command.includes('sleep 600')),
    `still running: ${commands.join(' | ')}`,
  );
  t.true(
    commands.some((command) => command.includes('redis-server')),
    'the service itself keeps running',
  );
});
