import test from 'ava';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { PACKAGE_ROOT } from '../src/config.js';
import { LABEL } from '../src/docker/types.js';
import { waitFor } from '../src/wait.js';
import { pgQuery } from './helpers/engine-watch.js';
import { brokerEnv, CLI, type Run } from './helpers/cli.js';
import { brokerObjects, startTestBroker, type TestBroker } from './helpers/env.js';

/**
 * osb-docker's everyday commands against a real broker, engine and PostgreSQL: update, info, logs, connect, restart,
 * list's endpoint and real state, did-you-mean, name rules, and the container's name and label. The reconciler is
 * off, so a killed container stays down until `restart` brings it back.
 */

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(61, { reconcileSeconds: 0 });
});
test.after.always(async () => {
  await env?.stop();
});

function start(args: string[], stdin?: string): { child: ChildProcess; done: Promise<Run>; output: () => string; stderr: () => string } {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: PACKAGE_ROOT,
    env: brokerEnv(env),
    stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk) => (stdout += chunk));
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  // An empty stdin stays open (a session that waits for input); any other is written and closed.
  if (stdin) child.stdin!.end(stdin);
  const done = new Promise<Run>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { child, done, output: () => stdout, stderr: () => stderr };
}

const cli = (args: string[], stdin?: string) => start(args, stdin).done;
const show = (result: Run) => `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;
const listed = async () => (await env.client.request('GET', '/broker/v1/instances')).body.instances as any[];

test.serial('create, list, connect, logs, update, info, a killed container, restart and delete with osb-docker', async (t) => {
  // create prints each step with the seconds since it began.
  const created = await cli(['create', 'postgresql', 'small', 'shop']);
  t.is(created.code, 0, show(created));
  t.regex(created.stderr, /^Creating shop \(postgresql small\)…\n( +\d+\.\d s {2}\S.*\n)+Ready after \d+\.\d s\. Next: osb-docker bind shop\n$/);
  const [instance] = await listed();
  t.is(instance.name, 'shop');

  // The container carries the name (and a hash of the id, so names stay unique) and a label with the name.
  const { containers, volumes } = await brokerObjects(env.config.brokerId);
  t.is(containers.length, 1);
  const container = containers[0]!;
  t.regex(container.name, new RegExp(`^osb-${env.config.brokerId}-shop_[0-9a-f]{32}$`));
  t.is(container.labels[LABEL.instanceName], 'shop');
  t.is(container.labels[LABEL.instance], instance.id);
  t.deepEqual(
    volumes.map((volume) => volume.name),
    [`${container.name}-data`],
  );

  // list: the endpoint, and the engine's state.
  t.regex(instance.endpoint, /^127\.0\.0\.1:\d+$/);
  t.deepEqual(instance.container, { state: 'running' });
  const list = await cli(['list']);
  t.is(list.code, 0, show(list));
  const rows = list.stdout
    .trim()
    .split('\n')
    .map((line) => line.split(/\s{2,}/));
  t.deepEqual(rows, [
    ['NAME', 'OFFERING', 'PLAN', 'STATE', 'ENDPOINT', 'BINDINGS', 'LAST OPERATION'],
    ['shop', 'postgresql', 'small', 'ready', instance.endpoint, '-', 'provision succeeded'],
  ]);

  // A binding of its own, to write log lines that carry its password.
  const bound = await cli(['bind', 'shop', '--show-credentials']);
  t.is(bound.code, 0, show(bound));
  const credentials = JSON.parse(bound.stdout.slice(bound.stdout.indexOf('{'))).credentials;
  const inspected = execFileSync('docker', ['inspect', container.name]).toString();
  t.false(inspected.includes(credentials.password), 'no secret in the container metadata');

  // connect: psql with stdin piped, through a temporary binding that is gone afterwards.
  const selected = await cli(['connect', 'shop'], 'select 40 + 2 as answer;\n\\conninfo\n');
  t.is(selected.code, 0, show(selected));
  t.regex(selected.stdout, /^\s+42$/m);
  t.regex(selected.stdout, /SSL connection \(protocol: TLSv1\.[23]/);
  t.regex(selected.stderr, /Connected to shop with psql, PostgreSQL's interactive terminal over verified TLS as u[0-9a-z]+/);
  t.deepEqual(
    (await listed())[0].bindings.map((binding: { name: string }) => binding.name),
    ['shop-binding'],
  );
  // The client from the offering's image, when asked (or when none is installed here).
  const inImage = await cli(['connect', 'shop', '--image'], 'select 1;\n');
  t.is(inImage.code, 0, show(inImage));
  t.regex(inImage.stdout, /^\s+1$/m);
  // A client that fails: its exit code, and the binding still goes.
  const failed = await cli(['connect', 'shop'], 'select no_such_column;\n');
  t.is(failed.code, 3, show(failed));
  t.regex(failed.stderr, /psql ended with exit code 3/);
  t.is((await listed())[0].bindings.length, 1);
  // A session ended from outside (SIGTERM, as when its terminal goes): the client is ended and the binding goes too.
  const waiting = start(['connect', 'shop'], '');
  await waitFor(async () => ((await listed())[0].bindings.length === 2 ? true : undefined), { intervalMs: 200, timeoutMs: 30_000 });
  await waitFor(() => (waiting.stderr().includes('Connected to shop') ? true : undefined), { intervalMs: 100, timeoutMs: 30_000 });
  waiting.child.kill('SIGTERM');
  const ended = await waiting.done;
  t.not(ended.code, 0, show(ended));
  t.is((await listed())[0].bindings.length, 1, show(ended));

  // logs: the last N lines, and a secret the engine wrote is masked.
  await t.throwsAsync(pgQuery(credentials.uri, `SELECT '${credentials.password}'::int`));
  const tail = await cli(['logs', 'shop', '--tail', '3']);
  t.is(tail.code, 0, show(tail));
  t.is(tail.stdout.split('\n').length, 4, tail.stdout);
  t.regex(tail.stdout, /invalid input syntax for type integer: "••••••"/);
  t.false(tail.stdout.includes(credentials.password));

  // logs -f: a line written after it started appears.
  const follow = start(['logs', 'shop', '-f', '--tail', '0']);
  try {
    await waitFor(
      async () => {
        await pgQuery(credentials.uri, `SELECT 'followed-line'::int`).catch(() => undefined);
        return follow.output().includes('"followed-line"') ? true : undefined;
      },
      { intervalMs: 500, timeoutMs: 20_000 },
    );
  } finally {
    follow.child.kill('SIGINT');
  }
  const followed = await follow.done;
  t.is(followed.code, 0, show(followed));
  t.false(followed.stdout.includes('invalid input syntax for type integer: "••••••"'), 'only new lines with --tail 0');

  // update: the new plan's memory limit on the running container.
  const updated = await cli(['update', 'shop', '--plan', 'medium']);
  t.is(updated.code, 0, show(updated));
  t.is(updated.stdout, 'Updated shop: plan small → medium.\n');
  t.is(execFileSync('docker', ['inspect', '--format', '{{.HostConfig.Memory}}', container.name]).toString().trim(), String(1024 * 1024 * 1024));

  const info = await cli(['info', 'shop']);
  t.is(info.code, 0, show(info));
  t.regex(info.stdout, /^Offering: +postgresql medium, version \S+$/m);
  t.regex(info.stdout, /^Limits: +1024 MiB memory, 1 CPU, 256 processes$/m);
  t.regex(info.stdout, /^State: +running since \S+/m);
  t.regex(info.stdout, new RegExp(`^Endpoint: +${instance.endpoint}$`, 'm'));
  t.regex(info.stdout, new RegExp(`^Container: +${container.name}$`, 'm'));
  t.regex(info.stdout, /^Bindings: +shop-binding$/m);
  t.regex(info.stdout, /^Last backup: +none yet$/m);
  // Disk usage, where the listing measures it.
  if ((await listed())[0].disk) t.regex(info.stdout, /^Disk: +\d+(\.\d)? [kMG]?B of \d+(\.\d)? [kMG]?B \(\d+ %\) used/m);

  // A killed container: a log being followed ends, and info and list say so (the reconciler is off here, so nothing
  // brings it back) ...
  const following = start(['logs', 'shop', '-f', '--tail', '1']);
  await waitFor(() => (following.output() ? true : undefined), { intervalMs: 100, timeoutMs: 10_000 });
  execFileSync('docker', ['kill', container.name]);
  const followEnded = await following.done;
  t.is(followEnded.code, 0, show(followEnded));
  const killed = await cli(['info', 'shop']);
  t.regex(killed.stdout, /^State: +exited with code 137 \(killed\)/m, show(killed));
  const listKilled = await cli(['list']);
  t.regex(listKilled.stdout, /^shop +postgresql +medium +exited \(code 137\) /m, show(listKilled));

  // ... until restart brings it back.
  const restarted = await cli(['restart', 'shop']);
  t.is(restarted.code, 0, show(restarted));
  t.is(restarted.stdout, 'Restarted shop.\n');
  t.regex((await cli(['info', 'shop'])).stdout, /^State: +running since /m);
  t.is((await pgQuery(credentials.uri, 'SELECT 1 AS one')).rows[0].one, 1);

  // An instance name mistyped.
  const typo = await cli(['info', 'shpo']);
  t.is(typo.code, 1);
  t.is(typo.stderr, 'osb-docker: no service instance named "shpo" (did you mean "shop"?); instances: shop\n');

  const deleted = await cli(['delete', 'shop']);
  t.is(deleted.code, 0, show(deleted));
});

test.serial('typos get a did-you-mean, tags name their offering, and new names follow the rule', async (t) => {
  const offering = await cli(['create', 'postgrs', 'small', 'db']);
  t.is(offering.code, 1);
  t.regex(offering.stderr, /^osb-docker: unknown offering "postgrs" \(did you mean "postgresql"\?\); offerings: /);

  // "postgres" is one of postgresql's tags: taken, with a note (the plan typo stops it before anything is made).
  const tagged = await cli(['create', 'postgres', 'smal', 'db']);
  t.is(tagged.code, 1);
  t.is(
    tagged.stderr,
    '"postgres" is a tag of postgresql: using postgresql.\nosb-docker: unknown plan "smal" of postgresql (did you mean "small"?); plans: small, medium\n',
  );
  // A near miss of a tag suggests the offering it belongs to.
  const nearTag = await cli(['create', 'mosquito', 'small', 'db']);
  t.regex(nearTag.stderr, /^osb-docker: unknown offering "mosquito" \(did you mean "mqtt"\? "mosquitto" is one of its tags\); offerings: /);
  // A tag several offerings have names none of them.
  const shared = await cli(['create', 'sql', 'small', 'db']);
  t.regex(shared.stderr, /unknown offering "sql" \(a tag of mariadb, postgresql: name one\)|unknown offering "sql" \(a tag of postgresql, mariadb: name one\)/);

  const name = await cli(['create', 'postgresql', 'small', 'my shop']);
  t.is(name.code, 2);
  t.regex(name.stderr, /^osb-docker: "my shop" is not a valid instance name: a name is 1 to 50 letters, digits, dots, hyphens and underscores/);
  t.deepEqual(await listed(), []);
});
