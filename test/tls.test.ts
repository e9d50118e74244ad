// TLS against the real engines (port block 50): PostgreSQL with verify-full and the binding's CA, MariaDB through
// mysql2 with ssl.ca and identity checks, require_tls closing the plain way in, a short-lived certificate renewed and
// served, and a killed container brought back by the reconciler still serving TLS.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { X509Certificate } from 'node:crypto';
import pg from 'pg';
import mysql from 'mysql2/promise';
import { createCa } from '../src/tls/certificates.js';
import { PG, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitFor } from '../src/wait.js';

const MARIADB = { service: '0f5e3bfd-1d78-49ad-9f16-78ce4c376b52', small: 'c65006c3-2c84-4a77-93b1-c14c76cd9075' };
/** Short enough that the test sees a renewal (at two thirds: 60 s), long enough for the other checks in between. */
const CERT_SECONDS = 90;

type Creds = Record<string, unknown> & { host: string; port: number; username: string; password: string; database: string; uri: string };

let env: TestBroker;
const folder = mkdtempSync(path.join(tmpdir(), 'osb-tls-test-'));
test.before(async () => {
  env = await startTestBroker(50, { tlsCertSeconds: CERT_SECONDS, tlsRenewCheckSeconds: 2, reconcileSeconds: 2 });
});
test.after.always(async () => {
  await env?.stop();
  rmSync(folder, { recursive: true, force: true });
});

async function provision(serviceId: string, planId: string, parameters: Record<string, unknown>): Promise<string> {
  const id = uniqueId('tls');
  const created = await env.client.request('PUT', `/v2/service_instances/${id}?accepts_incomplete=true`, provisionBody(serviceId, planId, { parameters }));
  if (created.status !== 202) throw new Error(`provision answered ${created.status}: ${JSON.stringify(created.body)}`);
  const done = await env.client.waitForInstance(id, undefined, 900_000);
  if (done.body.state !== 'succeeded') throw new Error(`provision failed: ${done.body.description}`);
  return id;
}

async function bind(instanceId: string, serviceId: string, planId: string): Promise<Creds> {
  const bound = await env.client.bind(instanceId, uniqueId('b'), { service_id: serviceId, plan_id: planId });
  if (bound.status !== 201) throw new Error(`bind answered ${bound.status}: ${JSON.stringify(bound.body)}`);
  return bound.body.credentials as Creds;
}

/** A pg client from the credentials' parts; `ssl` as node-postgres takes it. */
async function pgQuery(creds: Creds, ssl: pg.ClientConfig['ssl'], sql: string): Promise<unknown[]> {
  return pgSession(new pg.Client({ host: creds.host, port: creds.port, user: creds.username, password: creds.password, database: creds.database, ssl }), sql);
}

/** The rows of `sql`, and whether the session ran over TLS (the client's socket is a TLS one). */
async function pgSession(client: pg.Client, sql: string): Promise<unknown[]> {
  await client.connect();
  try {
    const { rows } = await client.query(sql);
    const encrypted = (client as unknown as { connection: { stream: { encrypted?: boolean } } }).connection.stream.encrypted === true;
    return [...rows, { encrypted }];
  } finally {
    await client.end();
  }
}

/** The certificate PostgreSQL serves on its port: SSLRequest, then a TLS handshake that trusts `ca` for `host`. */
async function servedByPostgres(host: string, port: number, ca: string): Promise<X509Certificate> {
  const socket = netConnect({ host, port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const request = Buffer.alloc(8);
  request.writeInt32BE(8, 0);
  request.writeInt32BE(80877103, 4);
  socket.write(request);
  const answer = await new Promise<string>((resolve, reject) =>
    socket.once('data', (data: Buffer) => resolve(data.toString('latin1', 0, 1))).once('error', reject),
  );
  if (answer !== 'S') throw new Error(`the server answered ${answer} to SSLRequest`);
  const secure = tlsConnect({ socket, ca, host, servername: /^[\d.]+$/.test(host) ? undefined : host });
  try {
    return await new Promise<X509Certificate>((resolve, reject) =>
      secure.once('secureConnect', () => resolve(secure.getPeerX509Certificate()!)).once('error', reject),
    );
  } finally {
    secure.destroy();
  }
}

test.serial('PostgreSQL: verify-full with the binding CA, a wrong CA fails, plain works until require_tls closes it', async (t) => {
  const id = await provision(PG.service, PG.small, {});
  const creds = await bind(id, PG.service, PG.small);
  t.regex(String(creds.ca_certificate), /^-----BEGIN CERTIFICATE-----/);
  t.is(creds.sslmode, 'verify-full');
  t.false(creds.uri.includes('sslmode'), 'plain and TLS both work: the uri asks for neither');

  // node-postgres verifies the chain and the host name (verify-full) with the CA handed to it.
  t.deepEqual(await pgQuery(creds, { ca: String(creds.ca_certificate) }, 'SELECT 1 AS one'), [{ one: 1 }, { encrypted: true }]);
  // The uri with libpq's sslmode=verify-full and sslrootcert (node-postgres reads the file as libpq does).
  const caFile = path.join(folder, 'ca.pem');
  writeFileSync(caFile, String(creds.ca_certificate));
  const viaUri = new pg.Client({ connectionString: `${creds.uri}?sslmode=verify-full&sslrootcert=${encodeURIComponent(caFile)}` });
  t.deepEqual(await pgSession(viaUri, 'SELECT 1 AS one'), [{ one: 1 }, { encrypted: true }]);
  // Another CA: the server's certificate is refused.
  const other = await createCa('other', new Date());
  await t.throwsAsync(pgQuery(creds, { ca: other.cert }, 'SELECT 1'), { message: /self.signed|unable to verify|certificate/i });
  // Plain still works by default.
  t.deepEqual(await pgQuery(creds, false, 'SELECT 1 AS one'), [{ one: 1 }, { encrypted: false }]);

  const update = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: PG.service,
    plan_id: PG.small,
    parameters: { require_tls: true },
  });
  t.is(update.status, 202, JSON.stringify(update.body));
  t.is((await env.client.waitForInstance(id, update.body.operation)).body.state, 'succeeded');
  await t.throwsAsync(pgQuery(creds, false, 'SELECT 1'), { message: /no pg_hba\.conf entry.*no encryption/ });
  t.deepEqual(await pgQuery(creds, { ca: String(creds.ca_certificate) }, 'SELECT 1 AS one'), [{ one: 1 }, { encrypted: true }]);
  const fetched = (await env.client.request('GET', `/v2/service_instances/${id}/service_bindings/${await bindId(id)}`)).body.credentials as Creds;
  t.true(fetched.uri.endsWith('?sslmode=verify-full'), fetched.uri);
  t.regex(String(fetched.jdbcUrl), /&ssl=true&sslmode=verify-full$/);
  pgInstance = { id, creds };
});

let pgInstance: { id: string; creds: Creds } | undefined;

/** The id of the instance's only binding, from the listing endpoint. */
async function bindId(instanceId: string): Promise<string> {
  const listing = await env.client.request('GET', '/broker/v1/instances');
  const instance = (listing.body.instances as Array<{ id: string; bindings: Array<{ id: string }> }>).find((entry) => entry.id === instanceId);
  return instance!.bindings[0]!.id;
}

test.serial('PostgreSQL: a certificate at two thirds of its life is renewed, served, and clients still verify it', async (t) => {
  if (!pgInstance) return t.fail('the first PostgreSQL test did not finish');
  const { creds } = pgInstance;
  const ca = String(creds.ca_certificate);
  const before = await servedByPostgres(creds.host, creds.port, ca);
  const renewed = await waitFor(
    async () => {
      const served = await servedByPostgres(creds.host, creds.port, ca);
      return served.serialNumber !== before.serialNumber ? served : undefined;
    },
    { intervalMs: 1000, timeoutMs: CERT_SECONDS * 1000 },
  );
  t.true(Date.parse(renewed.validTo) > Date.parse(before.validTo), `${renewed.validTo} after ${before.validTo}`);
  t.deepEqual(await pgQuery(creds, { ca }, 'SELECT 1 AS one'), [{ one: 1 }, { encrypted: true }]);
});

test.serial('PostgreSQL: a killed container is brought back by the reconciler and still serves verified TLS', async (t) => {
  if (!pgInstance) return t.fail('the first PostgreSQL test did not finish');
  const { id, creds } = pgInstance;
  // Found by its label: the name carries the instance name the platform gave.
  const container = execFileSync('docker', ['ps', '-a', '--filter', `label=io.osb-broker.instance=${id}`, '--format', '{{.Names}}'], {
    encoding: 'utf8',
  }).trim();
  const startedAt = execFileSync('docker', ['inspect', '--format', '{{.State.StartedAt}}', container]).toString().trim();
  execFileSync('docker', ['kill', container]);
  await waitFor(
    async () => {
      const now = execFileSync('docker', ['inspect', '--format', '{{.State.Running}} {{.State.StartedAt}}', container]).toString().trim();
      return now.startsWith('true ') && !now.endsWith(startedAt) ? true : undefined;
    },
    { intervalMs: 500, timeoutMs: 120_000 },
  );
  const rows = await waitFor(async () => pgQuery(creds, { ca: String(creds.ca_certificate) }, 'SELECT 1 AS one').catch(() => undefined), {
    intervalMs: 500,
    timeoutMs: 60_000,
  });
  t.deepEqual(rows, [{ one: 1 }, { encrypted: true }]);
  await t.throwsAsync(pgQuery(creds, false, 'SELECT 1'), { message: /no pg_hba\.conf entry/ }, 'require_tls holds after the restart');
});

test('MariaDB: mysql2 with ssl.ca and identity checks connects; require_tls refuses plain logins', async (t) => {
  const id = await provision(MARIADB.service, MARIADB.small, { require_tls: true });
  const creds = await bind(id, MARIADB.service, MARIADB.small);
  const ssl = creds.ssl as { ca: string };
  t.is(ssl.ca, String(creds.ca_certificate));
  t.true(creds.uri.endsWith('?ssl-mode=VERIFY_IDENTITY'), creds.uri);
  t.regex(String(creds.jdbcUrl), /&sslMode=VERIFY_IDENTITY$/);
  const parts = { host: creds.host, port: creds.port, user: creds.username, password: creds.password, database: creds.database, connectTimeout: 5000 };
  const secure = await mysql.createConnection({ ...parts, ssl: { ...ssl, verifyIdentity: true } });
  const [rows] = await secure.query<mysql.RowDataPacket[]>("SHOW SESSION STATUS LIKE 'Ssl_cipher'");
  t.truthy(rows[0]?.Value, 'the session is encrypted');
  await secure.end();
  const other = await createCa('other', new Date());
  await t.throwsAsync(mysql.createConnection({ ...parts, ssl: { ca: other.cert } }), { message: /self.signed|unable to verify|certificate/i });
  // MariaDB 10.11 refuses a plain login under require_secure_transport as an access denial; the same credentials
  // just logged in over TLS, so the transport is what is refused.
  await t.throwsAsync(mysql.createConnection(parts), { message: /insecure transport|Access denied/i });
});
