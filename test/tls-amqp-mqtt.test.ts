// TLS of RabbitMQ and Mosquitto against the real engines (port block 54): amqplib over amqps:// and mqtt.js over
// mqtts:// with the binding's CA and the host name checked, another CA refused, require_tls closing the plain port,
// and a short-lived certificate renewed, served and still verified.
import test from 'ava';
import { randomBytes, type X509Certificate } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import amqp from 'amqplib';
import mqtt, { type IClientOptions } from 'mqtt';
import { createCa } from '../src/tls/certificates.js';
import { servedCertificate } from './helpers/tls.js';
import { startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody } from './helpers/osb-client.js';
import { waitFor } from '../src/wait.js';

const RABBITMQ = { service: '6b592c13-3465-4be4-a448-7c14258b034c', small: 'bf8e1ee2-edda-44a2-ab3d-ba531124d51b' };
const MQTT = { service: '6d6a455a-02d9-43ec-884b-bb6c5e827a77', small: '68f7c072-2a32-4b72-b3f3-bc56f5f9c620' };
/** Short enough that the test sees a renewal (at two thirds: 60 s), long enough for the other checks in between. */
const CERT_SECONDS = 90;

type Creds = Record<string, unknown> & { host: string; port: number; uri: string; ca_certificate: string; tls_port: number };

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(54, { tlsCertSeconds: CERT_SECONDS, tlsRenewCheckSeconds: 2 });
});
test.after.always(async () => {
  await env?.stop();
});

async function provision(service: { service: string; small: string }, parameters: Record<string, unknown>): Promise<string> {
  const id = uniqueId('tls');
  const created = await env.client.request(
    'PUT',
    `/v2/service_instances/${id}?accepts_incomplete=true`,
    provisionBody(service.service, service.small, { parameters }),
  );
  if (created.status !== 202) throw new Error(`provision answered ${created.status}: ${JSON.stringify(created.body)}`);
  const done = await env.client.waitForInstance(id, undefined, 900_000);
  if (done.body.state !== 'succeeded') throw new Error(`provision failed: ${done.body.description}`);
  return id;
}

async function bind(instanceId: string, service: { service: string; small: string }): Promise<{ bindingId: string; creds: Creds }> {
  const bindingId = uniqueId('b');
  const bound = await env.client.bind(instanceId, bindingId, { service_id: service.service, plan_id: service.small });
  if (bound.status !== 201) throw new Error(`bind answered ${bound.status}: ${JSON.stringify(bound.body)}`);
  return { bindingId, creds: bound.body.credentials as Creds };
}

async function requireTls(instanceId: string, service: { service: string; small: string }, value = true): Promise<string> {
  const update = await env.client.request('PATCH', `/v2/service_instances/${instanceId}?accepts_incomplete=true`, {
    service_id: service.service,
    plan_id: service.small,
    parameters: { require_tls: value },
  });
  if (update.status !== 202) throw new Error(`update answered ${update.status}: ${JSON.stringify(update.body)}`);
  const done = await env.client.waitForInstance(instanceId, update.body.operation);
  return done.body.state === 'succeeded' ? 'succeeded' : `${done.body.state}: ${done.body.description}`;
}

async function fetchCreds(instanceId: string, bindingId: string): Promise<Creds> {
  return (await env.client.request('GET', `/v2/service_instances/${instanceId}/service_bindings/${bindingId}`)).body.credentials as Creds;
}

/** The user name the management API answers GET /whoami with, over HTTPS verified against `ca`. */
async function whoami(apiUri: string, ca: string): Promise<string> {
  const url = new URL('whoami', apiUri);
  const auth = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  url.username = url.password = '';
  return new Promise((resolve, reject) => {
    const request = httpsRequest(url, { ca, auth }, (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      response.on('end', () =>
        response.statusCode === 200 ? resolve((JSON.parse(body) as { name: string }).name) : reject(new Error(`HTTP ${response.statusCode}`)),
      );
    });
    request.once('error', reject).end();
  });
}

/** AMQP through amqplib: declares a queue, sends a message and gets it back; whether the socket was a TLS one. */
async function amqpRoundTrip(uri: string, socketOptions: Record<string, unknown> = {}): Promise<{ message: string; encrypted: boolean }> {
  const connection = await amqp.connect(uri, { timeout: 10_000, ...socketOptions });
  connection.on('error', () => {});
  try {
    const channel = await connection.createChannel();
    const queue = (await channel.assertQueue('', { exclusive: true })).queue;
    channel.sendToQueue(queue, Buffer.from('over tls'));
    const got = await waitFor(async () => (await channel.get(queue, { noAck: true })) || undefined, { intervalMs: 100, timeoutMs: 10_000 });
    const stream = (connection as unknown as { connection: { stream: { encrypted?: boolean } } }).connection.stream;
    return { message: got.content.toString(), encrypted: stream.encrypted === true };
  } finally {
    await connection.close().catch(() => {});
  }
}

/** MQTT through mqtt.js: subscribes, publishes and receives one message; never reconnects, so a refusal rejects. */
async function mqttRoundTrip(uri: string, options: IClientOptions = {}): Promise<{ message: string; encrypted: boolean }> {
  const client = mqtt.connect(uri, { clientId: `osb-test-${randomBytes(4).toString('hex')}`, reconnectPeriod: 0, connectTimeout: 5000, ...options });
  try {
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
      client.once('close', () => reject(new Error('connection closed before CONNACK')));
    });
    const topic = `osb/tls/${randomBytes(4).toString('hex')}`;
    const message = new Promise<string>((resolve) => client.once('message', (_topic, payload) => resolve(payload.toString())));
    await client.subscribeAsync(topic, { qos: 1 });
    await client.publishAsync(topic, 'over tls', { qos: 1 });
    const encrypted = (client.stream as unknown as { encrypted?: boolean }).encrypted === true;
    return { message: await message, encrypted };
  } finally {
    client.end(true);
  }
}

const UNTRUSTED = /self.signed|unable to verify|certificate/i;
const plainAgain: Array<{ name: string; turnOff: () => Promise<string>; plain: () => Promise<{ message: string; encrypted: boolean }> }> = [];
const renewals: Array<{ name: string; creds: Creds; before: X509Certificate; roundTrip: () => Promise<{ message: string; encrypted: boolean }> }> = [];

test.serial('MQTT: mqtts with the binding CA and the name checked, another CA refused, plain until require_tls closes it', async (t) => {
  const id = await provision(MQTT, {});
  const { bindingId, creds } = await bind(id, MQTT);
  const ca = creds.ca_certificate;
  t.regex(ca, /^-----BEGIN CERTIFICATE-----/);
  t.true(Number.isInteger(creds.tls_port) && creds.tls_port !== creds.port, `tls_port ${creds.tls_port}`);
  t.is(creds.mqtts_uri, creds.uri.replace(/^mqtt:/, 'mqtts:').replace(`:${creds.port}`, `:${creds.tls_port}`));
  t.regex(creds.uri, /^mqtt:\/\//, 'plain and TLS both work: uri stays mqtt://');

  const verified = { ca, rejectUnauthorized: true };
  t.deepEqual(await mqttRoundTrip(String(creds.mqtts_uri), verified), { message: 'over tls', encrypted: true });
  const other = await createCa('other', new Date());
  await t.throwsAsync(mqttRoundTrip(String(creds.mqtts_uri), { ca: other.cert, rejectUnauthorized: true }), { message: UNTRUSTED });
  // The certificate names the advertised host only: asked for another name, the same chain fails the name check.
  await t.throwsAsync(servedCertificate(creds.host, creds.tls_port, ca, { servername: 'elsewhere.example' }), { message: /altnames/ });
  t.deepEqual(await mqttRoundTrip(creds.uri), { message: 'over tls', encrypted: false });

  t.is(await requireTls(id, MQTT), 'succeeded');
  await t.throwsAsync(mqttRoundTrip(creds.uri), { message: /ECONNREFUSED|ECONNRESET|closed before CONNACK/ });
  const fetched = await fetchCreds(id, bindingId);
  t.is(fetched.uri, String(creds.mqtts_uri));
  t.is(fetched.port, creds.tls_port);
  t.deepEqual(await mqttRoundTrip(fetched.uri, verified), { message: 'over tls', encrypted: true });
  plainAgain.push({ name: 'MQTT', turnOff: () => requireTls(id, MQTT, false), plain: () => mqttRoundTrip(creds.uri) });
  renewals.push({
    name: 'MQTT',
    creds,
    before: await servedCertificate(creds.host, creds.tls_port, ca),
    roundTrip: () => mqttRoundTrip(fetched.uri, verified),
  });
});

test.serial('RabbitMQ: amqps with the binding CA and the name checked, another CA refused, plain until require_tls closes it', async (t) => {
  const id = await provision(RABBITMQ, {});
  const { bindingId, creds } = await bind(id, RABBITMQ);
  const ca = creds.ca_certificate;
  t.regex(ca, /^-----BEGIN CERTIFICATE-----/);
  t.true(Number.isInteger(creds.tls_port) && creds.tls_port !== creds.port, `tls_port ${creds.tls_port}`);
  t.is(creds.amqps_uri, creds.uri.replace(/^amqp:/, 'amqps:').replace(`:${creds.port}/`, `:${creds.tls_port}/`));
  t.regex(creds.uri, /^amqp:\/\//, 'plain and TLS both work: uri stays amqp://');

  // amqplib hands these socket options to tls.connect, which checks the chain and the host's names.
  t.deepEqual(await amqpRoundTrip(String(creds.amqps_uri), { ca: [ca] }), { message: 'over tls', encrypted: true });
  const other = await createCa('other', new Date());
  await t.throwsAsync(amqpRoundTrip(String(creds.amqps_uri), { ca: [other.cert] }), { message: UNTRUSTED });
  await t.throwsAsync(servedCertificate(creds.host, creds.tls_port, ca, { servername: 'elsewhere.example' }), { message: /altnames/ });
  t.deepEqual(await amqpRoundTrip(creds.uri), { message: 'over tls', encrypted: false });
  // The management API over HTTPS, with the same certificate.
  t.is(await whoami(String(creds.https_api_uri), ca), String(creds.username));
  await t.throwsAsync(whoami(String(creds.https_api_uri), other.cert), { message: UNTRUSTED });

  t.is(await requireTls(id, RABBITMQ), 'succeeded');
  await t.throwsAsync(amqpRoundTrip(creds.uri), { message: /ECONNREFUSED|ECONNRESET|Socket closed|closed/i });
  const fetched = await fetchCreds(id, bindingId);
  t.is(fetched.uri, String(creds.amqps_uri));
  t.is(fetched.port, creds.tls_port);
  t.is(fetched.http_api_uri, creds.https_api_uri);
  t.deepEqual(await amqpRoundTrip(fetched.uri, { ca: [ca] }), { message: 'over tls', encrypted: true });
  plainAgain.push({ name: 'RabbitMQ', turnOff: () => requireTls(id, RABBITMQ, false), plain: () => amqpRoundTrip(creds.uri) });
  renewals.push({
    name: 'RabbitMQ',
    creds,
    before: await servedCertificate(creds.host, creds.tls_port, ca),
    roundTrip: () => amqpRoundTrip(fetched.uri, { ca: [ca] }),
  });
});

test.serial('a certificate at two thirds of its life is renewed and served; clients still verify it', async (t) => {
  if (renewals.length < 2) return t.fail('an engine test above did not finish');
  for (const { name, creds, before, roundTrip } of renewals) {
    const ca = creds.ca_certificate;
    const renewed = await waitFor(
      async () => {
        const now = await servedCertificate(creds.host, creds.tls_port, ca);
        return now.serialNumber !== before.serialNumber ? now : undefined;
      },
      { intervalMs: 1000, timeoutMs: CERT_SECONDS * 1000 },
    );
    t.true(Date.parse(renewed.validTo) > Date.parse(before.validTo), `${name}: ${renewed.validTo} after ${before.validTo}`);
    t.deepEqual(await roundTrip(), { message: 'over tls', encrypted: true }, name);
  }
});

test.serial('turning require_tls off opens the plain port again', async (t) => {
  if (plainAgain.length < 2) return t.fail('an engine test above did not finish');
  for (const { name, turnOff, plain } of plainAgain) {
    t.is(await turnOff(), 'succeeded', name);
    t.deepEqual(await plain(), { message: 'over tls', encrypted: false }, name);
  }
});
