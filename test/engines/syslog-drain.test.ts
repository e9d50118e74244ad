import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { promisify } from 'node:util';
import test from 'ava';
import { brokerObjects, redisKeys, startTestBroker, uniqueId, type TestBroker } from '../helpers/env.js';
import { provisionBody } from '../helpers/osb-client.js';

const SYSLOG = {
  service: '84967dcb-ebf0-4cfd-8ab6-8f728fe8b4fc',
  small: '9ce9e8c8-8d12-4dce-83fa-776abec6d023',
  medium: '574c8f66-5972-429d-9d37-072259217b18',
};
const LOG_DIR = '/var/lib/syslog-drain/logs';
const MiB = 1024 * 1024;

const run = promisify(execFile);

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(15);
});
test.after.always(async () => {
  await env?.stop();
});

/** Opens one TCP connection, writes every frame, closes it and waits until the server has seen the end. */
async function sendFrames(port: number, frames: string[]): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  for (const frame of frames) socket.write(frame);
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.end(resolve);
  });
  socket.destroy();
}

const rfc5424 = (text: string) => `<14>1 2026-11-22T10:00:00Z myhost myapp 123 ID47 - ${text}`;
/** RFC 6587 octet counting: "<length> <message>". */
const octetCounted = (message: string) => `${Buffer.byteLength(message)} ${message}`;

/** What `docker logs` shows of the container (rsyslog writes the messages to its stdout). */
async function containerLog(name: string): Promise<string> {
  const { stdout, stderr } = await run('docker', ['logs', name], { maxBuffer: 64 * MiB });
  return stdout + stderr;
}

async function execIn(name: string, script: string): Promise<string> {
  const { stdout } = await run('docker', ['exec', name, 'bash', '-c', script], { maxBuffer: 64 * MiB });
  return stdout;
}

/** The kept log files, oldest first, and their sizes. */
async function logFiles(name: string): Promise<Array<{ file: string; size: number }>> {
  const out = await execIn(name, `cd ${LOG_DIR} && ls -1 | sort | xargs -r stat -c '%n %s'`);
  return out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [file, size] = line.split(' ');
      return { file: file!, size: Number(size) };
    });
}

/** Polls until `found()` holds; false when it still does not after `ms`. */
async function eventually(found: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!(await found())) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return true;
}

/** Every key of a JSON value, at any depth. */
function keysOf(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(keysOf);
  if (value && typeof value === 'object') return Object.entries(value).flatMap(([key, inner]) => [key, ...keysOf(inner)]);
  return [];
}

test('the catalog offers syslog-drain', async (t) => {
  const catalog = await env.client.request('GET', '/v2/catalog');
  t.is(catalog.status, 200);
  const offering = catalog.body.services.find((service: any) => service.id === SYSLOG.service);
  t.truthy(offering, 'the syslog-drain offering is listed');
  t.is(offering.name, 'syslog-drain');
  t.deepEqual(offering.requires, ['syslog_drain']);
  t.deepEqual(offering.tags, ['syslog', 'syslog-drain', 'logging', 'rsyslog']);
  t.true(offering.bindable);
  t.deepEqual(
    offering.plans.map((plan: any) => [plan.id, plan.name]),
    [
      [SYSLOG.small, 'small'],
      [SYSLOG.medium, 'medium'],
    ],
  );
  t.deepEqual(offering.plans[0].maintenance_info, {
    version: '8.2302.2',
    description: 'rsyslog 8.2302.0 on Debian bookworm, with backup and restore and engine stats',
  });
});

test('syslog drain: bind hands out the drain url, messages reach docker logs and the capped file', async (t) => {
  const { client, config } = env;
  const id = uniqueId();
  const accepted = await client.provision(id, provisionBody(SYSLOG.service, SYSLOG.small, { parameters: { max_file_mb: 1 } }));
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const ready = await client.waitForInstance(id, accepted.body.operation);
  t.is(ready.body.state, 'succeeded', ready.body.description);

  const { containers } = await brokerObjects(config.brokerId);
  t.is(containers.length, 1);
  const container = containers[0]!;
  const port = container.hostPort!;

  // The binding: a drain url, no credentials and nothing secret.
  const bindBody = { service_id: SYSLOG.service, plan_id: SYSLOG.small, bind_resource: { app_guid: 'app-1' } };
  const bound = await client.bind(id, 'drain-1', bindBody);
  t.is(bound.status, 201, JSON.stringify(bound.body));
  t.is(bound.body.syslog_drain_url, `syslog://${config.advertisedHost}:${port}`);
  t.deepEqual(bound.body.credentials, {});
  t.deepEqual(
    keysOf(bound.body).filter((key) => /pass|user|secret|token/i.test(key)),
    [],
    'no secret-looking field',
  );
  const fetched = await client.request('GET', `/v2/service_instances/${id}/service_bindings/drain-1`);
  t.is(fetched.status, 200);
  t.is(fetched.body.syslog_drain_url, bound.body.syslog_drain_url);
  t.deepEqual(fetched.body.credentials, {});

  // Three RFC 5424 messages: two octet-counted on one connection, one newline-framed on another.
  const tokens = [1, 2, 3].map(() => `tok-${randomBytes(8).toString('hex')}`);
  const drainPort = Number(new URL(bound.body.syslog_drain_url).port);
  await sendFrames(drainPort, [octetCounted(rfc5424(`hello ${tokens[0]}`)), octetCounted(rfc5424(`hello ${tokens[1]}`))]);
  await sendFrames(drainPort, [`${rfc5424(`hello ${tokens[2]}`)}\n`]);
  const lines = tokens.map((token) => `2026-11-22T10:00:00Z myhost myapp[123]: hello ${token}`);
  t.true(
    await eventually(async () => {
      const log = await containerLog(container.name);
      return lines.every((line) => log.includes(line));
    }),
    'the three messages are in docker logs within 5 s',
  );
  t.true(
    await eventually(async () => {
      const file = await execIn(container.name, `cat ${LOG_DIR}/drain.log 2>/dev/null || true`);
      return lines.every((line) => file.includes(line));
    }),
    'the three messages are in the file on the volume within 5 s',
  );

  // The cap: 3 MiB sent to a 1 MiB drain leaves at most 1 MiB on the volume, newest messages kept.
  const first = `first-${randomBytes(6).toString('hex')}`;
  const last = `last-${randomBytes(6).toString('hex')}`;
  const filler = 'x'.repeat(200);
  const burst = (count: number) => [
    octetCounted(rfc5424(`bulk ${first}`)),
    ...Array.from({ length: count }, (_, i) => octetCounted(rfc5424(`bulk ${i} ${filler}`))),
    octetCounted(rfc5424(`bulk ${last}`)),
  ];
  await sendFrames(drainPort, burst(12_000));
  // 3 MiB through rsyslog and two rotations: seconds on a machine busy with the rest of the suite.
  t.true(
    await eventually(async () => (await execIn(container.name, `cat ${LOG_DIR}/drain.log 2>/dev/null || true`)).includes(last), 30_000),
    'the whole burst arrived',
  );
  let files = await logFiles(container.name);
  let total = files.reduce((sum, file) => sum + file.size, 0);
  t.true(total <= 1 * MiB, `kept files take ${total} bytes, cap 1 MiB`);
  t.true(files.length >= 2, `the file was rotated (${files.map((file) => file.file).join(', ')})`);
  t.true(
    files.every((file) => /^drain\.log(\.\d{19})?$/.test(file.file)),
    files.map((file) => file.file).join(', '),
  );
  const kept = await execIn(container.name, `cat ${LOG_DIR}/*`);
  t.false(kept.includes(first), 'the oldest messages were deleted');
  t.false(kept.includes(tokens[0]!), 'so were the first three');

  // max_file_mb is updatable: 2 MiB keeps more than 1 MiB, never more than 2.
  const updated = await client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: SYSLOG.service,
    parameters: { max_file_mb: 2 },
  });
  t.is(updated.status, 202, JSON.stringify(updated.body));
  t.is((await client.waitForInstance(id, updated.body.operation)).body.state, 'succeeded');
  t.is((await execIn(container.name, 'cat /var/lib/syslog-drain/max_file_mb')).trim(), '2');
  await sendFrames(drainPort, burst(12_000));
  t.true(
    await eventually(async () => (await execIn(container.name, `cat ${LOG_DIR}/drain.log 2>/dev/null || true`)).split(last).length === 2, 30_000),
    'the whole second burst arrived',
  );
  files = await logFiles(container.name);
  total = files.reduce((sum, file) => sum + file.size, 0);
  t.true(total <= 2 * MiB && total > 1 * MiB, `kept files take ${total} bytes, cap 2 MiB`);

  // rsyslog is PID 1, as the unprivileged syslog user, listening on TCP only.
  t.is((await execIn(container.name, 'tr "\\0" " " </proc/1/cmdline')).trim(), '/usr/sbin/rsyslogd -n -iNONE -f /etc/osb-syslog-drain/rsyslog.conf');
  t.regex(await execIn(container.name, 'cat /proc/1/status'), /^Uid:\s+999\s/m);

  const unbound = await client.unbind(id, 'drain-1', SYSLOG.service, SYSLOG.small);
  t.is(unbound.status, 200, JSON.stringify(unbound.body));
  t.deepEqual(unbound.body, {});

  const deleting = await client.deprovision(id, SYSLOG.service, SYSLOG.small);
  t.is(deleting.status, 202);
  t.is((await client.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');
  const left = await brokerObjects(config.brokerId);
  t.deepEqual([...left.containers.map((c) => c.name), ...left.volumes.map((v) => v.name)], [], 'no container or volume left');
  t.deepEqual(
    (await redisKeys(env.redisUrl, `osb:${config.brokerId}:port:*`)).filter((key) => key.endsWith(`:${port}`)),
    [],
    'no port reservation left',
  );
  await t.throwsAsync(() => sendFrames(drainPort, ['after deprovision\n']), undefined, 'nothing listens any more');
});
