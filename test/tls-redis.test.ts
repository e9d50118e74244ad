// Redis over TLS against the real engine (port block 53): ioredis with a rediss:// uri and the binding's CA (chain
// and host name verified), another CA and another name refused, plain and TLS side by side until require_tls closes
// the plain port, a short-lived certificate renewed and served on the TLS port, and a killed container brought back
// by the reconciler still serving TLS only, and the plain port back once require_tls is turned off.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import type { ConnectionOptions } from 'node:tls';
import { Redis } from 'ioredis';
import { createCa } from '../src/tls/certificates.js';
import { redisPlainAnswer, servedCertificate } from './helpers/tls.js';
import { startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitFor } from '../src/wait.js';

const REDIS = { service: '2cd75c09-eebe-4945-8f8a-2ce77a2f0f36', small: '92776b7b-46d1-4950-91fb-9b675ca53968' };
/** Short enough that the test sees a renewal (at two thirds: 60 s), long enough for the other checks in between. */
const CERT_SECONDS = 90;

type Creds = Record<string, unknown> & {
  host: string;
  port: number;
  tls_port: number;
  username: string;
  uri: string;
  rediss_uri: string;
  ca_certificate: string;
};

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(53, { tlsCertSeconds: CERT_SECONDS, tlsRenewCheckSeconds: 2, reconcileSeconds: 2 });
});
test.after.always(async () => {
  await env?.stop();
});

/** Who the server says is logged in, and whether the session ran over TLS; `tls` as ioredis takes it. */
async function whoami(uri: string, tls?: ConnectionOptions): Promise<{ user: unknown; encrypted: boolean }> {
  const redis = new Redis(uri, { tls, lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  // A refused handshake or login closes the connection; the reason arrives as an error event.
  let reason: Error | undefined;
  redis.on('error', (error: Error) => {
    reason = error;
  });
  try {
    await redis.connect();
    const user = await redis.call('ACL', 'WHOAMI');
    const encrypted = (redis as unknown as { stream: { encrypted?: boolean } }).stream.encrypted === true;
    return { user, encrypted };
  } catch (error) {
    throw reason ?? error;
  } finally {
    redis.disconnect();
  }
}

let instance: { id: string; creds: Creds } | undefined;

test.serial('ioredis over rediss:// verifies the binding CA and the host name; plain works until require_tls closes it', async (t) => {
  const id = uniqueId('tls');
  const created = await env.client.request('PUT', `/v2/service_instances/${id}?accepts_incomplete=true`, provisionBody(REDIS.service, REDIS.small, {}));
  t.is(created.status, 202, JSON.stringify(created.body));
  t.is((await env.client.waitForInstance(id, undefined, 900_000)).body.state, 'succeeded');
  const bindingId = uniqueId('b');
  const bound = await env.client.bind(id, bindingId, { service_id: REDIS.service, plan_id: REDIS.small });
  t.is(bound.status, 201, JSON.stringify(bound.body));
  const creds = bound.body.credentials as Creds;
  const ca = creds.ca_certificate;
  t.regex(ca, /^-----BEGIN CERTIFICATE-----/);
  t.is(typeof creds.tls_port, 'number');
  t.not(creds.tls_port, creds.port);
  t.true(creds.uri.startsWith('redis://'), 'plain and TLS both work: uri stays plain');
  t.is(creds.rediss_uri, creds.uri.replace(/^redis:/, 'rediss:').replace(/:\d+$/, `:${creds.tls_port}`));

  t.deepEqual(await whoami(creds.rediss_uri, { ca }), { user: creds.username, encrypted: true });
  t.deepEqual(await whoami(creds.uri), { user: creds.username, encrypted: false });
  t.regex(await redisPlainAnswer(creds.host, creds.port), /^-NOAUTH/);
  // Another CA: the server's certificate is refused. Another name: the host name check refuses it too.
  const other = await createCa('other', new Date());
  await t.throwsAsync(whoami(creds.rediss_uri, { ca: other.cert }), { message: /self.signed|unable to verify|certificate/i });
  await t.throwsAsync(whoami(creds.rediss_uri, { ca, servername: 'elsewhere.invalid' }), { message: /does not match|altnames/i });
  // TLS below 1.2 is not offered.
  await t.throwsAsync(whoami(creds.rediss_uri, { ca, maxVersion: 'TLSv1.1', minVersion: 'TLSv1.1' }));

  const update = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: REDIS.service,
    plan_id: REDIS.small,
    parameters: { require_tls: true },
  });
  t.is(update.status, 202, JSON.stringify(update.body));
  t.is((await env.client.waitForInstance(id, update.body.operation)).body.state, 'succeeded');
  // The plain port is closed: nothing answers behind the published port, the connection just ends.
  t.is(await redisPlainAnswer(creds.host, creds.port), '');
  await t.throwsAsync(whoami(creds.uri));
  const fetched = (await env.client.request('GET', `/v2/service_instances/${id}/service_bindings/${bindingId}`)).body.credentials as Creds;
  t.is(fetched.uri, creds.rediss_uri, 'under require_tls the uri is the rediss:// one');
  t.is(fetched.port, creds.tls_port);
  t.deepEqual(await whoami(fetched.uri, { ca }), { user: creds.username, encrypted: true });
  instance = { id, creds };
});

test.serial('a certificate at two thirds of its life is renewed, served on the TLS port, and clients still verify it', async (t) => {
  if (!instance) return t.fail('the first test did not finish');
  const { creds } = instance;
  const before = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate);
  const renewed = await waitFor(
    async () => {
      const now = await servedCertificate(creds.host, creds.tls_port, creds.ca_certificate);
      return now.serialNumber !== before.serialNumber ? now : undefined;
    },
    { intervalMs: 1000, timeoutMs: CERT_SECONDS * 1000 },
  );
  t.true(Date.parse(renewed.validTo) > Date.parse(before.validTo), `${renewed.validTo} after ${before.validTo}`);
  t.deepEqual(await whoami(creds.rediss_uri, { ca: creds.ca_certificate }), { user: creds.username, encrypted: true });
});

test.serial('a killed container is brought back by the reconciler, serving TLS and still not plain; turned off, plain is back', async (t) => {
  if (!instance) return t.fail('the first test did not finish');
  const { id, creds } = instance;
  // Found by its label: the name carries the instance name the platform gave.
  const container = execFileSync('docker', ['ps', '-a', '--filter', `label=io.osb-broker.instance=${id}`, '--format', '{{.Names}}'], {
    encoding: 'utf8',
  }).trim();
  execFileSync('docker', ['kill', container]);
  // Repaired only once the restart passed every step, the probe of the published port among them: with the plain
  // port closed, the broker probes the TLS port.
  const health = await waitFor(
    async () => {
      const listing = await env.client.request('GET', '/broker/v1/instances');
      const entry = (listing.body.instances as Array<{ id: string; health?: { state: string; summary: string } }>).find((each) => each.id === id);
      return entry?.health?.state === 'repaired' ? entry.health : undefined;
    },
    { intervalMs: 500, timeoutMs: 120_000 },
  );
  t.regex(health.summary, /restarted by the broker/);
  const session = await waitFor(async () => whoami(creds.rediss_uri, { ca: creds.ca_certificate }).catch(() => undefined), {
    intervalMs: 500,
    timeoutMs: 60_000,
  });
  t.deepEqual(session, { user: creds.username, encrypted: true });
  t.is(await redisPlainAnswer(creds.host, creds.port), '', 'require_tls holds after the restart');

  // Turned off, the plain port opens again on the running server.
  const update = await env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, {
    service_id: REDIS.service,
    plan_id: REDIS.small,
    parameters: { require_tls: false },
  });
  t.is(update.status, 202, JSON.stringify(update.body));
  t.is((await env.client.waitForInstance(id, update.body.operation)).body.state, 'succeeded');
  t.deepEqual(await whoami(creds.uri), { user: creds.username, encrypted: false });
});
