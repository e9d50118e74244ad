import test from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { PACKAGE_ROOT } from '../src/config.js';
import { waitFor } from '../src/wait.js';
import { removeEverything, startTestRedis } from './helpers/env.js';
import { OsbClient } from './helpers/osb-client.js';
import { hexKey, killAllBrokers, spawnBroker, tempStateDir } from './helpers/spawn-broker.js';

// Port block 63 (47300-47399): brokers listen on 47390-47394, instance ports would be 47300-47389 (none is made).
// The broker runs as a real process (node dist/src/main.js); a terminal is a real pseudo-terminal made by
// util-linux's `script`, as a person's shell would give it.

const secret = `pw-${randomBytes(12).toString('hex')}`;
const encryptionKey = hexKey();
let redis: Awaited<ReturnType<typeof startTestRedis>>;
const brokerIds: string[] = [];
const stateDirs: Array<ReturnType<typeof tempStateDir>> = [];
// eslint-disable-next-line no-control-regex
const ansi = /\x1b\[[0-9;]*m/g;

test.before(async () => {
  redis = await startTestRedis();
});

test.after.always(async () => {
  await killAllBrokers();
  for (const id of brokerIds) await removeEverything(id);
  for (const dir of stateDirs) dir.remove();
  await redis?.stop();
});

function brokerEnv(port: number, extra: Record<string, string> = {}): Record<string, string> {
  const brokerId = `l${randomBytes(4).toString('hex')}`;
  const stateDir = tempStateDir();
  brokerIds.push(brokerId);
  stateDirs.push(stateDir);
  return {
    PORT: String(port),
    REDIS_URL: redis.url,
    BROKER_ID: brokerId,
    BROKER_PORT_RANGE: '47300-47389',
    BROKER_STATE_DIR: stateDir.dir,
    BROKER_PASSWORD: secret,
    BROKER_ENCRYPTION_KEY: encryptionKey,
    BROKER_SHUTDOWN_SECONDS: '1',
    // The most the broker ever says: a secret in none of it.
    LOG_LEVEL: 'debug',
    ...extra,
  };
}

const readyLine = (port: number) => `ready at http://127.0.0.1:${port} (dashboard: http://127.0.0.1:${port}/dashboard)`;

function assertNoSecret(t: { false(actual: boolean, message?: string): void }, output: string) {
  t.false(output.includes(secret), 'the broker password is in the output');
  t.false(output.includes(encryptionKey), 'the encryption key is in the output');
  t.false(output.includes(Buffer.from(`broker:${secret}`).toString('base64')), 'the Authorization header is in the output');
}

/** A request with the credentials, so an access line carrying an Authorization header is logged. */
async function askCatalog(port: number): Promise<void> {
  const response = await new OsbClient(`http://127.0.0.1:${port}`, 'broker', secret).request('GET', '/v2/catalog');
  if (response.status !== 200) throw new Error(`GET /v2/catalog answered ${response.status}`);
}

/** The broker under `script`: its stdout and stderr are a terminal; everything it prints comes back here. */
async function onTerminal(env: Record<string, string>): Promise<{ output: () => string; stop(): Promise<void> }> {
  const childEnv: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !/^(PORT|REDIS_URL|LOG_LEVEL|BROKER_.*|NO_COLOR|FORCE_COLOR)$/.test(name)) childEnv[name] = value;
  }
  const command = `exec '${process.execPath}' '${path.join(PACKAGE_ROOT, 'dist/src/main.js')}'`;
  const child = spawn('script', ['-qfec', command, '/dev/null'], {
    cwd: PACKAGE_ROOT,
    env: { ...childEnv, ...env, TERM: 'xterm' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let ended = false;
  void exited.then(() => (ended = true));
  await waitFor(
    () => {
      if (ended) throw new Error(`the broker ended before it was ready:\n${output}`);
      return output.replace(ansi, '').includes('ready at') ? true : undefined;
    },
    { intervalMs: 50, timeoutMs: 60_000, onTimeout: () => new Error(`no "ready at" line within 60 s:\n${output}`) },
  );
  return {
    output: () => output,
    async stop() {
      // script ends the broker (SIGTERM, then SIGKILL) when it is told to end itself.
      child.kill('SIGTERM');
      await exited;
      await waitFor(
        () =>
          fetch(`http://127.0.0.1:${env.PORT}/healthz`).then(
            () => undefined,
            () => true,
          ),
        { intervalMs: 50, timeoutMs: 10_000 },
      );
    },
  };
}

test('JSON lines when stdout is not a terminal: the ready line, the stop, no secret', async (t) => {
  const port = 47390;
  const broker = await spawnBroker(brokerEnv(port));
  await askCatalog(port);
  t.deepEqual(await broker.kill('SIGTERM'), { code: 0, signal: null });

  const lines = broker.stdout.filter((line) => line.trim() !== '');
  t.true(lines.length > 3);
  for (const line of lines) t.notThrows(() => JSON.parse(line), line);
  const ready = broker.logs().find((record) => record.msg === readyLine(port));
  t.truthy(ready, broker.stdout.join('\n'));
  t.like(ready, { level: 30, port, publicUrl: `http://127.0.0.1:${port}`, dashboard: `http://127.0.0.1:${port}/dashboard` });
  t.truthy(broker.logs().find((record) => record.msg === 'request' && record.path === '/v2/catalog' && record.status === 200));
  t.truthy(broker.logs().find((record) => record.msg === 'stopped'));
  assertNoSecret(t, [...broker.stdout, ...broker.stderr].join('\n'));
});

test('BROKER_LOG_FORMAT=pretty gives lines for people on a pipe too, written out to the last one', async (t) => {
  const port = 47391;
  const broker = await spawnBroker(brokerEnv(port, { BROKER_LOG_FORMAT: 'pretty' }));
  await askCatalog(port);
  t.deepEqual(await broker.kill('SIGTERM'), { code: 0, signal: null });

  const lines = broker.stdout.map((line) => line.replace(ansi, '')).filter((line) => line.trim() !== '');
  t.deepEqual(broker.logs(), [], 'no JSON line');
  const ready = lines.find((line) => line.includes('ready at'));
  t.truthy(ready, lines.join('\n'));
  t.regex(ready!, new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\.\\d{3}\\] INFO: ${readyLine(port).replace(/[().]/g, '\\$&')} \\{`));
  t.true(
    lines.some((line) => /INFO: request \{.*"path":"\/v2\/catalog".*"status":200/.test(line)),
    'the request is logged',
  );
  // Written synchronously: the last lines are there although the process exits right after them.
  t.regex(lines.at(-1)!, /INFO: stopped/);
  assertNoSecret(t, [...broker.stdout, ...broker.stderr].join('\n'));
});

test('on a terminal the lines are for people, in colour, unless BROKER_LOG_FORMAT=json', async (t) => {
  const prettyPort = 47392;
  const pretty = await onTerminal(brokerEnv(prettyPort));
  await askCatalog(prettyPort);
  await pretty.stop();
  const prettyOutput = pretty.output();
  t.true(prettyOutput.includes('\x1b['), 'coloured');
  const plain = prettyOutput.replace(ansi, '').split(/\r?\n/);
  t.truthy(
    plain.find((line) => new RegExp(`^\\[[\\d:.]+\\] INFO: ${readyLine(prettyPort).replace(/[().]/g, '\\$&')}`).test(line)),
    plain.join('\n'),
  );
  t.false(
    plain.some((line) => line.startsWith('{"level"')),
    'no JSON line',
  );
  assertNoSecret(t, prettyOutput);

  const jsonPort = 47393;
  const json = await onTerminal(brokerEnv(jsonPort, { BROKER_LOG_FORMAT: 'json' }));
  await askCatalog(jsonPort);
  await json.stop();
  const records = json
    .output()
    .split(/\r?\n/)
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  t.truthy(
    records.find((record) => record.msg === readyLine(jsonPort)),
    json.output(),
  );
  t.false(json.output().includes('\x1b['), 'no colour codes in JSON');
  assertNoSecret(t, json.output());
});

test('an unknown BROKER_LOG_FORMAT stops the start with one clear line', async (t) => {
  const error = await t.throwsAsync(spawnBroker(brokerEnv(47394, { BROKER_LOG_FORMAT: 'fancy' })));
  t.regex(error.message, /osb-docker-broker cannot start: BROKER_LOG_FORMAT must be json, pretty or auto \(got "fancy"\)/);
});
