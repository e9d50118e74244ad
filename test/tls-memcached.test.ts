// Memcached over TLS against the real engine (port block 64). The client is python-binary-memcached (Debian's
// python3-binary-memcached): memjs, the Node client the offering's other tests use, has no TLS, and no Node client
// speaks the binary protocol with SASL over TLS. It sets and gets with a binding's credentials, trusting only the
// binding's CA and checking the host name; Node's tls.connect checks the served certificate's chain, names and
// protocol versions. memjs keeps working on the plain port until require_tls closes it; a certificate renewal
// restarts memcached on the new certificate; a killed container comes back still TLS only.
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { connect as netConnect } from 'node:net';
import path from 'node:path';
import memjs from 'memjs';
import { PACKAGE_ROOT } from '../src/config.js';
import { createCa } from '../src/tls/certificates.js';
import { waitFor } from '../src/wait.js';
import { servedCertificate } from './helpers/tls.js';
import { brokerObjects, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';

const MEMCACHED = { service: '97fa3eaf-8e67-4001-af44-0f4f8921ff48', small: '21fe54ca-7324-41da-a2a5-1050ef67e0dc' };
/** Short enough that the test sees a renewal (at two thirds: 60 s), long enough for the other checks in between. */
const CERT_SECONDS = 90;
/** Debian's interpreter, which has python3-binary-memcached (not whatever python3 comes first on the PATH). */
const PYTHON = '/usr/bin/python3';
const CLIENT = path.join(PACKAGE_ROOT, 'test', 'helpers', 'memcached-tls-client.py');

type Creds = Record<string, unknown> & {
  host: string;
  port: number;
  username: string;
  password: string;
  uri: string;
  servers: string;
  servers_with_credentials: string;
  ca_certificate: string;
  tls_port: number;
  tls_servers: string;
  tls_servers_with_credentials: string;
  memcacheds_uri: string;
};
type Op = ['set', string, string] | ['get', string];

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(64, { tlsCertSeconds: CERT_SECONDS, tlsRenewCheckSeconds: 2, reconcileSeconds: 2 });
});
test.after.always(async () => {
  await env?.stop();
});

/** Runs `ops` with python-binary-memcached over TLS: set answers false and get null when the server is refused, either
 * an object with the error when the login is. */
async function overTls(server: string, login: { username: string; password: string }, ca: string, ops: Op[]): Promise<unknown[]> {
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = execFile(PYTHON, [CLIENT], { timeout: 30_000 }, (error, out, err) => (error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out)));
    child.stdin!.end(JSON.stringify({ server, username: login.username, password: login.password, ca, ops }));
  });
  return (JSON.parse(stdout) as { results: unknown[] }).results;
}

/** Sets and gets one key with memjs, MemCachier style, on `servers` (plain); throws when refused. */
async function memjsRoundTrip(creds: Creds, key: string, value: string): Promise<string | undefined> {
  const client = memjs.Client.create(creds.servers, { username: creds.username, password: creds.password, retries: 0, timeout: 5, logger: { log() {} } });
  try {
    await client.set(key, value, { expires: 0 });
    return (await client.get(key)).value?.toString();
  } finally {
    client.close();
  }
}

/** Whether the plain port answers a SASL mechanism list (binary protocol); false when the connection just ends. */
async function plainAnswers(host: string, port: number): Promise<boolean> {
  const socket = netConnect({ host, port });
  let answer = Buffer.alloc(0);
  socket.on('data', (data: Buffer) => {
    answer = Buffer.concat([answer, data]);
    if (answer.length >= 24) socket.end();
  });
  const header = Buffer.alloc(24);
  header[0] = 0x80;
  header[1] = 0x20; // SASL list mechanisms
  socket.write(header);
  await new Promise<void>((resolve) => socket.once('close', () => resolve()).once('error', () => resolve()));
  return answer.length >= 24 && answer[0] === 0x81;
}

async function update(id: string, requireTls: boolean): Promise<void> {
  const accepted = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: MEMCACHED.service,
    plan_id: MEMCACHED.small,
    parameters: { require_tls: requireTls },
  });
  if (accepted.status !== 202) throw new Error(`update refused: ${JSON.stringify(accepted.body)}`);
  const done = await env.client.waitForInstance(id, accepted.body.operation);
  if (done.body.state !== 'succeeded') throw new Error(`update failed: ${JSON.stringify(done.body)}`);
}

let instance: { id: string; bindingId: string; creds: Creds } | undefined;

test.serial('a set and get over verified TLS with the binding; memjs on the plain port until require_tls closes it', async (t) => {
  const id = uniqueId('tls');
  const created = await env.client.request('PUT', `/v2/service_instances/${id}?accepts_incomplete=true`, provisionBody(MEMCACHED.service, MEMCACHED.small, {}));
  t.is(created.status, 202, JSON.stringify(created.body));
  t.is((await env.client.waitForInstance(id)).body.state, 'succeeded');
  const bindingId = uniqueId('b');
  const bound = await env.client.bind(id, bindingId, { service_id: MEMCACHED.service, plan_id: MEMCACHED.small });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const creds = bound.body.credentials as Creds;
  const { host, username, password, ca_certificate: ca } = creds;
  t.regex(ca, /^-----BEGIN CERTIFICATE-----/);
  t.is(typeof creds.tls_port, 'number');
  t.not(creds.tls_port, creds.port);
  t.is(creds.tls_servers, `${host}:${creds.tls_port}`);
  t.is(creds.tls_servers_with_credentials, `${username}:${password}@${host}:${creds.tls_port}`);
  t.is(creds.memcacheds_uri, `memcacheds://${encodeURIComponent(username)}:${encodeURIComponent(password)}@${host}:${creds.tls_port}`);
  t.is(creds.servers, `${host}:${creds.port}`, 'plain and TLS both work: servers stays plain');
  t.true(creds.uri.startsWith('memcached://'));

  // Over TLS with the binding's CA: written there, read by memjs on the plain port (one key space), and back.
  t.deepEqual(
    await overTls(creds.tls_servers, creds, ca, [
      ['set', 'greeting', 'over tls'],
      ['get', 'greeting'],
    ]),
    [true, 'over tls'],
  );
  t.is(await memjsRoundTrip(creds, 'plain', 'over plain'), 'over plain');
  t.deepEqual(await overTls(creds.tls_servers, creds, ca, [['get', 'plain']]), ['over plain']);
  // SASL is required over TLS too; another CA refuses the server's certificate.
  t.deepEqual(await overTls(creds.tls_servers, { username, password: `${password}x` }, ca, [['get', 'greeting']]), [
    { error: `("Code: 32 Message: b'Auth failure.'", 32)` },
  ]);
  const other = await createCa('other', new Date());
  t.deepEqual(await overTls(creds.tls_servers, creds, other.cert, [['set', 'refused', 'x']]), [false]);
  // The served certificate: the binding's CA and the advertised host verify it; another name does not; no TLS 1.1.
  t.truthy(await servedCertificate(host, creds.tls_port, ca));
  await t.throwsAsync(servedCertificate(host, creds.tls_port, ca, { servername: 'elsewhere.invalid' }), {
    message: /does not match|altnames/i,
  });
  await t.throwsAsync(servedCertificate(host, creds.tls_port, ca, { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1' }));

  await update(id, true);
  // Closed: the connection ends unanswered (memjs would wait for ever on it: it fails a request only on its own time-out).
  t.false(await plainAnswers(host, creds.port), 'the plain port is closed');
  const fetched = (await env.client.request('GET', `/v2/service_instances/${id}/service_bindings/${bindingId}`)).body.credentials as Creds;
  t.is(fetched.uri, creds.memcacheds_uri, 'under require_tls the uri is the memcacheds:// one');
  t.is(fetched.servers, creds.tls_servers);
  t.is(fetched.servers_with_credentials, creds.tls_servers_with_credentials);
  t.is(fetched.port, creds.tls_port);
  t.deepEqual(
    await overTls(fetched.servers, creds, ca, [
      ['set', 'after', 'require_tls'],
      ['get', 'after'],
    ]),
    [true, 'require_tls'],
  );
  instance = { id, bindingId, creds };
});

test.serial('a certificate at two thirds of its life is renewed: memcached restarts on it and clients verify it', async (t) => {
  if (!instance) return t.fail('the first test did not finish');
  const { creds } = instance;
  const before = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate);
  const renewed = await waitFor(
    async () => {
      const now = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate).catch(() => undefined);
      return now && now.serialNumber !== before.serialNumber ? now : undefined;
    },
    { intervalMs: 1000, timeoutMs: CERT_SECONDS * 1000 },
  );
  t.true(Date.parse(renewed.validTo) > Date.parse(before.validTo), `${renewed.validTo} after ${before.validTo}`);
  // The restart emptied the cache (memcached reads certificates only at start); the binding works on.
  const results = await waitFor(
    async () => {
      const answer = await overTls(creds.tls_servers, creds, creds.ca_certificate, [
        ['get', 'after'],
        ['set', 'renewed', 'yes'],
        ['get', 'renewed'],
      ]);
      return answer[1] === true ? answer : undefined;
    },
    { intervalMs: 500, timeoutMs: 15_000 },
  );
  t.deepEqual(results, [null, true, 'yes']);
});

test.serial('a killed container is brought back by the reconciler, TLS only; turned off, memjs works on the plain port again', async (t) => {
  if (!instance) return t.fail('the first test did not finish');
  const { id, creds } = instance;
  const { containers } = await brokerObjects(env.config.brokerId);
  t.is(containers.length, 1);
  execFileSync('docker', ['kill', containers[0]!.name]);
  const health = await waitFor(
    async () => {
      const listing = await env.client.request('GET', '/broker/v1/instances');
      const entry = (listing.body.instances as Array<{ id: string; health?: { state: string; summary: string } }>).find((each) => each.id === id);
      return entry?.health?.state === 'repaired' ? entry.health : undefined;
    },
    { intervalMs: 500, timeoutMs: 120_000 },
  );
  t.regex(health.summary, /restarted by the broker/);
  t.deepEqual(
    await overTls(creds.tls_servers, creds, creds.ca_certificate, [
      ['set', 'back', 'again'],
      ['get', 'back'],
    ]),
    [true, 'again'],
  );
  t.false(await plainAnswers(creds.host, creds.port), 'require_tls holds after the restart');

  await update(id, false);
  t.true(await plainAnswers(creds.host, creds.port));
  t.is(await memjsRoundTrip(creds, 'plain-again', 'yes'), 'yes');
});
