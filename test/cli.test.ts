import test from 'ava';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { LABEL } from '../src/docker/types.js';
import { pgQuery } from './helpers/engine-watch.js';
import { brokerEnv, CLI, runCommand, userEnv, type Run } from './helpers/cli.js';
import { engine, startTestBroker, type TestBroker } from './helpers/env.js';

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(18);
});
test.after.always(async () => {
  await env?.stop();
});

const run = (command: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) =>
  runCommand(command, args, { env: options.env ?? brokerEnv(env), cwd: options.cwd });
const cli = (args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) => run(process.execPath, [CLI, ...args], options);
const show = (result: Run) => `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;

test.serial('create, list, bind, env and delete PostgreSQL and Redis; the example app uses both through VCAP_SERVICES', async (t) => {
  const catalog = (await env.client.request('GET', '/v2/catalog')).body.services as Array<{ id: string; name: string; tags: string[] }>;

  // create waits for the provision and shows its progress.
  const createdPg = await cli(['create', 'postgresql', 'small', 'orders-db', '-c', '{"database":"orders"}']);
  t.is(createdPg.code, 0, show(createdPg));
  // The descriptions it polled, in order, each with the seconds since the request ("Provisioning requested." only
  // when a poll came before the next step), then the time it took.
  t.regex(createdPg.stderr, /Creating orders-db \(postgresql small\)…\n( +\d+\.\d s {2}\S.*\n)+Ready after \d+\.\d s\. Next: osb-docker bind orders-db\n$/);
  t.regex(
    createdPg.stdout,
    /^Created orders-db: postgresql small \(instance [0-9a-f-]{36}\)\.\nDashboard: http:\/\/\S+\/dashboard\/instances\/[0-9a-f-]{36}\?token=\S+\n$/,
  );
  const createdRedis = await cli(['create', 'redis', 'small', 'cache']);
  t.is(createdRedis.code, 0, show(createdRedis));

  // A name in use is refused before anything is provisioned.
  const duplicate = await cli(['create', 'redis', 'small', 'cache']);
  t.is(duplicate.code, 1);
  t.regex(duplicate.stderr, /a service instance named "cache" already exists \(redis small, ready\)/);

  // The broker kept the names the CLI sent in the provision context.
  const listing = (await env.client.request('GET', '/broker/v1/instances')).body.instances as Array<{
    id: string;
    name: string;
    service_name: string;
    endpoint: string;
    bindings: Array<{ id: string; name: string }>;
  }>;
  t.deepEqual(
    listing.map((instance) => [instance.name, instance.service_name]),
    [
      ['orders-db', 'postgresql'],
      ['cache', 'redis'],
    ],
  );
  const [pgInstance, redisInstance] = listing as [(typeof listing)[number], (typeof listing)[number]];
  t.true(createdPg.stdout.includes(pgInstance.id));

  const listed = await cli(['list']);
  t.is(listed.code, 0, show(listed));
  const rows = listed.stdout
    .trim()
    .split('\n')
    .map((line) => line.split(/\s{2,}/));
  t.deepEqual(rows, [
    ['NAME', 'OFFERING', 'PLAN', 'STATE', 'ENDPOINT', 'BINDINGS', 'LAST OPERATION'],
    ['orders-db', 'postgresql', 'small', 'ready', pgInstance.endpoint, '-', 'provision succeeded'],
    ['cache', 'redis', 'small', 'ready', redisInstance.endpoint, '-', 'provision succeeded'],
  ]);

  // Unknown names list the names there are; env needs a binding first.
  const unknown = await cli(['bind', 'orders']);
  t.is(unknown.code, 1);
  t.is(unknown.stderr, 'osb-docker: no service instance named "orders" (did you mean "orders-db"?); instances: orders-db, cache\n');
  const unbound = await cli(['env', 'orders-db']);
  t.is(unbound.code, 1);
  t.is(unbound.stderr, 'osb-docker: orders-db has no binding; create one with `osb-docker bind orders-db`\n');
  t.is(unbound.stdout, '');

  // bind: a summary, never the secrets unless asked.
  const boundPg = await cli(['bind', 'orders-db']);
  t.is(boundPg.code, 0, show(boundPg));
  t.regex(
    boundPg.stdout,
    /^Bound orders-db as orders-db-binding \(binding [0-9a-f-]{36}\)\.\nEndpoint: 127\.0\.0\.1:\d+\nCredential fields: uri, jdbcUrl, host, hostname, port, name, database, username, password, sslmode, ca_certificate\n$/,
  );
  const boundRedis = await cli(['bind', 'cache', '--as', 'app-cache']);
  t.is(boundRedis.code, 0, show(boundRedis));
  t.regex(boundRedis.stdout, /^Bound cache as app-cache /);

  // env --json: Cloud Foundry's VCAP_SERVICES.
  const json = await cli(['env', 'orders-db', 'cache', '--json']);
  t.is(json.code, 0, show(json));
  const vcap = JSON.parse(json.stdout);
  t.deepEqual(Object.keys(vcap), ['postgresql', 'redis']);
  t.is(vcap.postgresql.length, 1);
  t.is(vcap.redis.length, 1);
  const listedAfterBind = (await env.client.request('GET', '/broker/v1/instances')).body.instances as typeof listing;
  for (const [key, instance, bindingName] of [
    ['postgresql', pgInstance, 'orders-db-binding'],
    ['redis', redisInstance, 'app-cache'],
  ] as const) {
    const entry = vcap[key][0];
    const binding = listedAfterBind.find((candidate) => candidate.id === instance.id)!.bindings[0]!;
    t.is(binding.name, bindingName);
    const fetched = await env.client.request('GET', `/v2/service_instances/${instance.id}/service_bindings/${binding.id}`);
    t.deepEqual(entry, {
      binding_guid: binding.id,
      binding_name: bindingName,
      credentials: fetched.body.credentials,
      instance_guid: instance.id,
      instance_name: instance.name,
      label: key,
      // The binding name, as Cloud Foundry names a named binding; the default <instance>-binding keeps the instance name.
      name: bindingName === `${instance.name}-binding` ? instance.name : bindingName,
      plan: 'small',
      provider: null,
      tags: catalog.find((offering) => offering.name === key)!.tags,
      volume_mounts: [],
    });
    t.false(boundPg.stdout.includes(entry.credentials.password) || boundRedis.stdout.includes(entry.credentials.password), 'bind printed no secret');
  }
  t.is(vcap.postgresql[0].credentials.database, 'orders');

  // The export form, evaluated by sh, gives the app exactly that JSON; the app writes and reads both services.
  const cliCommand = `'${process.execPath}' '${CLI}' env orders-db cache`;
  const echoed = await run('sh', ['-c', `eval "$(${cliCommand})" && printf '%s' "$VCAP_SERVICES"`]);
  t.is(echoed.code, 0, show(echoed));
  t.deepEqual(JSON.parse(echoed.stdout), vcap);
  const app = await run('sh', ['-c', `eval "$(${cliCommand})" && '${process.execPath}' examples/vcap-app/index.js`]);
  t.is(app.code, 0, show(app));
  const pgLine = /^postgresql \(orders-db, plan small\): wrote and read back row (\d+) of vcap_app_visits$/m.exec(app.stdout);
  const redisLine = /^redis \(app-cache, plan small\): wrote and read back key (vcap-app:visit:([0-9a-f-]{36}))$/m.exec(app.stdout);
  t.truthy(pgLine, app.stdout);
  t.truthy(redisLine, app.stdout);
  t.regex(app.stdout, /^ok$/m);
  // What the app wrote is there, seen through the same bindings.
  const row = await pgQuery(vcap.postgresql[0].credentials.uri, 'SELECT token FROM vcap_app_visits WHERE id = $1', [Number(pgLine![1])]);
  t.is(row.rows[0]?.token, redisLine![2]);
  const redis = new Redis(vcap.redis[0].credentials.uri, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => {});
  try {
    await redis.connect();
    t.is(await redis.get(redisLine![1]!), redisLine![2]!);
  } finally {
    redis.disconnect();
  }

  // dashboard: a fresh link for that instance.
  const dashboard = await cli(['dashboard', 'cache']);
  t.is(dashboard.code, 0, show(dashboard));
  t.true(dashboard.stdout.startsWith(`${env.broker.publicUrl}/dashboard/instances/${redisInstance.id}?token=`), dashboard.stdout);

  // unbind without --as is refused when it would be ambiguous.
  t.is((await cli(['bind', 'orders-db', '--as', 'reporting'])).code, 0);
  const ambiguous = await cli(['unbind', 'orders-db']);
  t.is(ambiguous.code, 1);
  t.is(ambiguous.stderr, 'osb-docker: orders-db has 2 bindings (orders-db-binding, reporting); name one with --as or pass --all\n');
  const unbindOne = await cli(['unbind', 'orders-db', '--as', 'reporting']);
  t.is(unbindOne.code, 0, show(unbindOne));
  t.is(unbindOne.stdout, 'Unbound reporting from orders-db.\n');

  // delete unbinds first, then deprovisions; nothing is left behind.
  for (const name of ['orders-db', 'cache']) {
    const deleted = await cli(['delete', name]);
    t.is(deleted.code, 0, show(deleted));
    t.regex(deleted.stdout, new RegExp(`^Unbound \\S+ from ${name}\\.\\nDeleted ${name}\\.\\n$`));
    t.regex(deleted.stderr, /Removing the container, its volume and its bindings\./);
  }
  t.deepEqual(await engine.listContainers({ [LABEL.broker]: env.config.brokerId }), []);
  t.deepEqual(await engine.listVolumes({ [LABEL.broker]: env.config.brokerId }), []);
  t.deepEqual((await env.client.request('GET', '/broker/v1/instances')).body, { instances: [] });
  const empty = await cli(['list', '--json']);
  t.deepEqual(JSON.parse(empty.stdout), []);
  const gone = await cli(['delete', 'orders-db']);
  t.is(gone.code, 1);
  t.is(gone.stderr, 'osb-docker: no service instance named "orders-db"; there are none yet (osb-docker create <offering> <plan> <name>)\n');
});

test('catalog is a table of offerings, plans, descriptions and tags', async (t) => {
  const result = await cli(['catalog']);
  t.is(result.code, 0, show(result));
  const lines = result.stdout.trim().split('\n');
  t.deepEqual(lines[0]!.split(/\s{2,}/), ['OFFERING', 'PLANS', 'DESCRIPTION', 'TAGS']);
  const postgres = lines.find((line) => line.startsWith('postgresql '))!.split(/\s{2,}/);
  t.is(postgres[1], 'small, medium');
  t.is(postgres[3], 'postgresql, postgres, relational, sql');
});

test('unknown offerings and plans list the valid ones', async (t) => {
  const names = ((await env.client.request('GET', '/v2/catalog')).body.services as Array<{ name: string }>).map((offering) => offering.name);
  const offering = await cli(['create', 'nosuchthing', 'small', 'db']);
  t.is(offering.code, 1);
  t.is(offering.stderr, `osb-docker: unknown offering "nosuchthing"; offerings: ${names.join(', ')}\n`);
  const plan = await cli(['create', 'postgresql', 'large', 'db']);
  t.is(plan.code, 1);
  t.is(plan.stderr, 'osb-docker: unknown plan "large" of postgresql; plans: small, medium\n');
});

test('missing or wrong arguments print the usage line and exit 2, without calling the broker', async (t) => {
  const unreachable = { ...userEnv(), OSB_BROKER_URL: 'http://127.0.0.1:9' };
  const cases: Array<[string[], string]> = [
    [
      ['create', 'postgresql', 'small'],
      'osb-docker: create: missing <name>\nusage: osb-docker create <offering> <plan> <name> [-c JSON|FILE] [--org GUID] [--space GUID]\n',
    ],
    [['bind'], 'osb-docker: bind: missing <name>\nusage: osb-docker bind <name> [--as <binding-name>] [--show-credentials]\n'],
    [['env'], 'osb-docker: env: missing <name>\nusage: osb-docker env <name>... [--json]\n'],
    [['delete', 'a', 'b'], 'osb-docker: delete: too many arguments ("b")\nusage: osb-docker delete <name>\n'],
    [['list', '--as', 'x'], 'osb-docker: list does not take --as\nusage: osb-docker list [--json]\n'],
    [
      ['create', 'postgresql', 'small', 'db', '-c', '{"database":'],
      'osb-docker: -c is not valid JSON: Unexpected end of JSON input\nusage: osb-docker create <offering> <plan> <name> [-c JSON|FILE] [--org GUID] [--space GUID]\n',
    ],
  ];
  for (const [args, stderr] of cases) {
    const result = await cli(args, { env: unreachable });
    t.is(result.code, 2, `${args.join(' ')}: ${show(result)}`);
    t.is(result.stderr, stderr);
    t.is(result.stdout, '');
  }
  const nothing = await cli([], { env: unreachable });
  t.is(nothing.code, 2);
  t.regex(nothing.stderr, /^osb-docker: run services/);
  const help = await cli(['--help'], { env: unreachable });
  t.is(help.code, 0);
  t.regex(help.stdout, /OSB_BROKER_PASSWORD[\s\S]*\.broker-state\/secrets\.json/);
});

test('an unreachable broker: the message says where the CLI looked', async (t) => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  const result = await cli(['list'], { env: { ...brokerEnv(env), OSB_BROKER_URL: `http://127.0.0.1:${port}` } });
  t.is(result.code, 1);
  t.is(result.stderr, `osb-docker: cannot reach the broker at http://127.0.0.1:${port} (ECONNREFUSED); start it with \`npm start\` or set OSB_BROKER_URL\n`);
  const flag = await cli(['catalog', '--url', `http://127.0.0.1:${port}/`], { env: userEnv() });
  t.is(flag.code, 1);
  t.regex(flag.stderr, new RegExp(`cannot reach the broker at http://127\\.0\\.0\\.1:${port} \\(`));
});

test('refused credentials: the message says so and where the password came from', async (t) => {
  const wrong = await cli(['list'], { env: { ...brokerEnv(env), OSB_BROKER_PASSWORD: 'not-the-password' } });
  t.is(wrong.code, 1);
  t.regex(
    wrong.stderr,
    new RegExp(
      `^osb-docker: the broker at ${env.broker.url.replaceAll('.', '\\.')} refused the credentials of user "broker" \\(password from OSB_BROKER_PASSWORD\\);`,
    ),
  );
  t.regex(wrong.stderr, /OSB_BROKER_PASSWORD \(or --user and --password\)/);

  // Without OSB_BROKER_PASSWORD, the password a local broker saved is read from .broker-state/secrets.json ...
  const folder = mkdtempSync(path.join(tmpdir(), 'osb-cli-'));
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));
  const noPassword = { ...userEnv(), OSB_BROKER_URL: env.broker.url };
  const none = await cli(['list'], { env: noPassword, cwd: folder });
  t.is(none.code, 1);
  t.true(
    none.stderr.includes(`password from nowhere: OSB_BROKER_PASSWORD is unset and there is no ${path.join(folder, '.broker-state', 'secrets.json')}`),
    none.stderr,
  );
  mkdirSync(path.join(folder, '.broker-state'));
  writeFileSync(path.join(folder, '.broker-state', 'secrets.json'), JSON.stringify({ password: env.config.password, encryptionKey: 'x' }));
  const fromFile = await cli(['list', '--json'], { env: noPassword, cwd: folder });
  t.is(fromFile.code, 0, show(fromFile));
  t.true(Array.isArray(JSON.parse(fromFile.stdout)));
  // ... or from $BROKER_STATE_DIR, as the broker itself resolves it; --password wins over both.
  const stateDir = path.join(folder, 'elsewhere');
  mkdirSync(stateDir);
  writeFileSync(path.join(stateDir, 'secrets.json'), JSON.stringify({ password: 'stale' }));
  const fromStateDir = await cli(['list'], { env: { ...noPassword, BROKER_STATE_DIR: stateDir }, cwd: folder });
  t.is(fromStateDir.code, 1);
  t.true(fromStateDir.stderr.includes(`(password from ${path.join(stateDir, 'secrets.json')})`), fromStateDir.stderr);
  const flag = await cli(['list', '--json', '--password', env.config.password], { env: { ...noPassword, BROKER_STATE_DIR: stateDir }, cwd: folder });
  t.is(flag.code, 0, show(flag));
});

/** A stand-in broker whose provision fails, to see what the CLI sends and how it reports the failure. */
test("a failed provision shows the broker's description; requests carry the platform headers and context", async (t) => {
  const seen: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: any }> = [];
  let polls = 0;
  const server = createServer((request, response) => void answer(request, response));
  async function answer(request: IncomingMessage, response: import('node:http').ServerResponse): Promise<void> {
    let text = '';
    for await (const chunk of request) text += chunk;
    seen.push({ method: request.method!, url: request.url!, headers: request.headers, body: text ? JSON.parse(text) : undefined });
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      response.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      response.end(JSON.stringify(body));
    };
    if (request.url === '/v2/catalog')
      return send(200, { services: [{ id: 'svc', name: 'thing', description: 'd', bindable: true, plans: [{ id: 'p1', name: 'one', description: 'd' }] }] });
    if (request.url === '/broker/v1/instances') return send(200, { instances: [] });
    if (request.method === 'PUT') return send(202, { operation: 'op-1', dashboard_url: 'http://x/d' });
    if (request.url?.includes('/last_operation')) {
      polls++;
      if (polls === 1) return send(200, { state: 'in progress', description: 'Building the image.' }, { 'Retry-After': '1' });
      return send(200, { state: 'failed', description: 'Provisioning failed: the image build failed: no space left on device' });
    }
    send(404, { error: 'NotFound', description: 'no' });
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const result = await cli(['create', 'thing', 'one', 'my-thing', '-c', '{"size":3}', '--org', 'o-1'], {
      env: { ...userEnv(), OSB_BROKER_URL: url, OSB_BROKER_PASSWORD: 'pw' },
    });
    t.is(result.code, 1, show(result));
    t.regex(
      result.stderr,
      new RegExp(
        [
          '^Creating my-thing \\(thing one\\)…',
          ' +\\d+\\.\\d s {2}Building the image\\.',
          'osb-docker: creating my-thing failed: Provisioning failed: the image build failed: no space left on device',
          'The name stays taken until `osb-docker delete my-thing` removes what is left\\.',
          '$',
        ].join('\n'),
      ),
    );
    t.is(result.stdout, '');
    // One poll in progress (its description shown once), the next one failed.
    t.is(polls, 2);

    const put = seen.find((request) => request.method === 'PUT')!;
    const id = /^\/v2\/service_instances\/([0-9a-f-]{36})\?accepts_incomplete=true$/.exec(put.url)?.[1];
    t.truthy(id, put.url);
    t.deepEqual(put.body, {
      service_id: 'svc',
      plan_id: 'p1',
      organization_guid: 'o-1',
      space_guid: 'local',
      context: { platform: 'osb-docker-cli', instance_name: 'my-thing' },
      parameters: { size: 3 },
    });
    t.true(seen.some((request) => request.url === `/v2/service_instances/${id}/last_operation?operation=op-1`));
    for (const request of seen) {
      t.is(request.headers['x-broker-api-version'], '2.17');
      t.is(request.headers.authorization, `Basic ${Buffer.from('broker:pw').toString('base64')}`);
      t.regex(request.headers['x-broker-api-request-identity'] as string, /^[0-9a-f-]{36}$/);
      const [platform, encoded] = (request.headers['x-broker-api-originating-identity'] as string).split(' ');
      t.is(platform, 'osb-docker-cli');
      t.is(typeof JSON.parse(Buffer.from(encoded!, 'base64').toString('utf8')).user_id, 'string');
    }
    t.is(new Set(seen.map((request) => request.headers['x-broker-api-request-identity'])).size, seen.length, 'one identity per request');
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});
