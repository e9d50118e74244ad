import test from 'ava';
import type { ChildProcess } from 'node:child_process';
import mqtt from 'mqtt';
import { waitFor } from '../src/wait.js';
import { brokerEnv, CLI, runCommand, type Run, type RunOptions } from './helpers/cli.js';
import { startTestBroker, type TestBroker } from './helpers/env.js';

/**
 * osb-docker connect with each offering's own client against the real broker and engine: redis-cli as installed
 * here, and MariaDB's client, which is not installed here, from the offering's image through the local docker. Each
 * session runs over TLS verified against the binding's CA (Redis and MQTT with require_tls, so nothing else would
 * answer). The offerings without a shell say so. Every session's temporary binding is gone afterwards.
 */

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(62);
});
test.after.always(async () => {
  await env?.stop();
});

const cli = (args: string[], stdin = '', started?: RunOptions['started']): Promise<Run> =>
  runCommand(process.execPath, [CLI, ...args], { env: brokerEnv(env), stdin, started });
const show = (result: Run) => `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;
/** Bindings of the named instances (the tests of this file run at once, each on instances of its own). */
const bindingCount = async (...names: string[]) =>
  ((await env.client.request('GET', '/broker/v1/instances')).body.instances as Array<{ name: string; bindings: unknown[] }>)
    .filter((instance) => names.includes(instance.name))
    .reduce((sum, instance) => sum + instance.bindings.length, 0);

test('redis-cli from this machine and mariadb from the offering image, each with a binding of its own for the session', async (t) => {
  const created = await Promise.all([cli(['create', 'redis', 'small', 'cache', '-c', '{"require_tls": true}']), cli(['create', 'mariadb', 'small', 'orders'])]);
  for (const result of created) t.is(result.code, 0, show(result));

  const redis = await cli(['connect', 'cache'], 'SET greeting hello\nGET greeting\nACL WHOAMI\n');
  t.is(redis.code, 0, show(redis));
  t.deepEqual(redis.stdout.trim().split('\n').slice(0, 2), ['OK', 'hello']);
  // The session's own user, not the administrator.
  t.regex(redis.stdout.trim().split('\n')[2]!, /^u[0-9a-z]+$/);
  t.regex(redis.stderr, /Connected to cache with redis-cli over verified TLS as u[0-9a-z]+/);

  // mariadb is not installed here: it runs from osb-broker/mariadb with the local docker.
  const mariadb = await cli(
    ['connect', 'orders'],
    "SELECT 6 * 7 AS answer, CURRENT_USER() LIKE 'u%' AS own_user, (SELECT VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher') AS tls;\n",
  );
  t.is(mariadb.code, 0, show(mariadb));
  t.deepEqual(mariadb.stdout.trim().split('\n'), ['answer\town_user\ttls', '42\t1\t1']);
  t.is(await bindingCount('cache', 'orders'), 0);

  // A failing statement: the client's exit code, and still no binding left.
  const failed = await cli(['connect', 'orders'], 'SELECT no_such_column;\n');
  t.is(failed.code, 1, show(failed));
  t.regex(failed.stderr, /Unknown column 'no_such_column'/);
  t.is(await bindingCount('orders'), 0);
});

test('offerings without a shell say so and what to use instead, and bind nothing', async (t) => {
  const created = await cli(['create', 'memcached', 'small', 'sessions']);
  t.is(created.code, 0, show(created));
  const result = await cli(['connect', 'sessions']);
  t.is(result.code, 1);
  t.regex(result.stderr, /^osb-docker: memcached has no shell to connect to: Memcached has no shell: .*memjs/);
  t.is(await bindingCount('sessions'), 0);
});

test('MQTT: connect watches every topic with mosquitto_sub from the offering image until it is ended', async (t) => {
  t.is((await cli(['create', 'mqtt', 'small', 'events', '-c', '{"require_tls": true}'])).code, 0);
  const bound = await cli(['bind', 'events', '--show-credentials']);
  const { uri, ca_certificate: ca } = JSON.parse(bound.stdout.slice(bound.stdout.indexOf('{'))).credentials;
  let session: ChildProcess | undefined;
  let seen = () => '';
  const ended = cli(['connect', 'events'], '', (child, output) => {
    session = child;
    seen = output;
  });
  t.regex(uri, /^mqtts:\/\//);
  const publisher = await mqtt.connectAsync(uri, { clientId: `cli-connect-${Date.now()}`, reconnectPeriod: 0, ca });
  try {
    // Published until the session has subscribed and prints it: "topic payload".
    await waitFor(
      async () => {
        await publisher.publishAsync('orders/created', 'order 42');
        return seen().includes('orders/created order 42') ? true : undefined;
      },
      { intervalMs: 300, timeoutMs: 60_000 },
    );
  } finally {
    await publisher.endAsync();
    session?.kill('SIGTERM');
  }
  const result = await ended;
  t.regex(result.stderr, /Connected to events with mosquitto_sub.* over verified TLS/);
  t.regex(result.stdout, /^orders\/created order 42$/m);
  // Only the publisher's own binding is left.
  t.is(await bindingCount('events'), 1, show(result));
});
