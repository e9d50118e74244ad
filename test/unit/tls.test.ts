// The broker's CA, server certificate issuance and the renewal rules, without an engine: certificates are checked
// with Node's own X509Certificate and a real TLS handshake on loopback.
import 'reflect-metadata';
import test from 'ava';
import { once } from 'node:events';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { connect, createServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import * as x509 from '@peculiar/x509';
import {
  certificateFacts,
  checkCa,
  issuedBy,
  createCa,
  issueServerCertificate,
  needsRenewal,
  renewalDue,
  TlsError,
  type StoredCertificate,
} from '../../src/tls/certificates.js';
import { InstanceTls, type TlsFiles, type TlsStore } from '../../src/broker/tls.js';
import { credentialsTemplate, renderCredentials } from '../../src/broker/credentials.js';
import { Offerings } from '../../src/broker/offerings.js';
import { createLogger } from '../../src/log.js';
import type { ServiceDefinition } from '../../src/catalog/definition.js';
import type { InstanceRecord } from '../../src/store/records.js';

const NOW = new Date('2026-11-30T00:00:00Z');
const DAY = 86_400_000;

/** The server's certificate as a client that trusts `ca` and expects `host` sees it; rejects when verification fails. */
async function handshake(pair: { cert: string; key: string }, ca: string, host: string): Promise<X509Certificate> {
  const server = createServer({ cert: pair.cert, key: pair.key }, (socket) => socket.end());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    const socket: TLSSocket = connect({ host: '127.0.0.1', port, ca, servername: host.match(/^[\d.]+$/) ? undefined : host });
    // Node checks the identity against `servername` or, without it, the address connected to.
    const peer = await new Promise<X509Certificate>((resolve, reject) => {
      socket.once('secureConnect', () => resolve(socket.getPeerX509Certificate()!));
      socket.once('error', reject);
    });
    socket.destroy();
    return peer;
  } finally {
    server.close();
  }
}

test('a new CA is a self-signed ECDSA P-256 CA certificate with its key', async (t) => {
  const ca = await createCa('b1', NOW);
  const cert = new X509Certificate(ca.cert);
  t.true(cert.ca);
  t.true(cert.checkIssued(cert));
  t.true(cert.checkPrivateKey(createPrivateKey(ca.key)));
  t.is(createPrivateKey(ca.key).asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.regex(cert.subject, /osb-docker-broker b1 CA/);
  t.true(Date.parse(cert.validTo) > NOW.getTime() + 3000 * DAY);
});

test('a server certificate names the advertised host, is signed by the CA and verifies in a TLS handshake', async (t) => {
  const ca = await createCa('b1', new Date());
  const issued = await issueServerCertificate(ca, ['127.0.0.1'], new Date(), 3600);
  const cert = new X509Certificate(issued.cert);
  t.true(cert.checkIssued(new X509Certificate(ca.cert)));
  t.false(cert.ca);
  t.is(cert.subjectAltName, 'IP Address:127.0.0.1');
  t.true(cert.checkPrivateKey(createPrivateKey(issued.key)));
  t.is(issued.serial, cert.serialNumber.toUpperCase());
  const peer = await handshake(issued, ca.cert, '127.0.0.1');
  t.is(peer.serialNumber, cert.serialNumber);
});

test('a DNS name goes into the certificate as a DNS name, and another host or CA fails verification', async (t) => {
  const ca = await createCa('b1', new Date());
  const other = await createCa('b2', new Date());
  const issued = await issueServerCertificate(ca, ['db.example.test'], new Date(), 3600);
  t.is(new X509Certificate(issued.cert).subjectAltName, 'DNS:db.example.test');
  await t.notThrowsAsync(handshake(issued, ca.cert, 'db.example.test'));
  await t.throwsAsync(handshake(issued, ca.cert, 'other.example.test'), { message: /does not match|not in the cert's altnames/i });
  await t.throwsAsync(handshake(issued, other.cert, 'db.example.test'), { message: /unable to verify|self.signed|certificate/i });
});

test('a certificate tells which CA issued it', async (t) => {
  const ca = await createCa('b1', NOW);
  const other = await createCa('b1', NOW);
  const issued = await issueServerCertificate(ca, ['127.0.0.1'], NOW, 3600);
  t.true(issuedBy(issued.cert, ca.cert));
  t.false(issuedBy(issued.cert, other.cert), 'same name, other key');
});

test('a server certificate never outlives its CA', async (t) => {
  const ca = await createCa('b1', NOW, 10);
  const issued = await issueServerCertificate(ca, ['127.0.0.1'], NOW, 90 * 86400);
  t.is(issued.notAfter, certificateFacts(ca.cert).notAfter);
});

test('renewal is due at two thirds of the life, or at once for other hosts', (t) => {
  const facts = { notBefore: new Date(NOW.getTime() - 5 * 60_000).toISOString(), notAfter: new Date(NOW.getTime() + 90 * DAY).toISOString() };
  t.is(renewalDue(facts).toISOString(), new Date(NOW.getTime() + 60 * DAY).toISOString());
  const hosts = ['127.0.0.1'];
  t.false(needsRenewal({ ...facts, hosts }, hosts, new Date(NOW.getTime() + 59 * DAY)));
  t.true(needsRenewal({ ...facts, hosts }, hosts, new Date(NOW.getTime() + 60 * DAY)));
  t.true(needsRenewal({ ...facts, hosts }, ['db.example.test'], NOW));
});

test("an operator's CA is taken when the key belongs to it; other pairs are refused with a reason", async (t) => {
  const ca = await createCa('op', NOW);
  // SEC1 ("EC PRIVATE KEY") is accepted and kept as PKCS#8.
  const sec1 = createPrivateKey(ca.key).export({ type: 'sec1', format: 'pem' }).toString();
  t.regex(checkCa({ cert: ca.cert, key: sec1 }, NOW).key, /BEGIN PRIVATE KEY/);
  const other = await createCa('x', NOW);
  t.throws(() => checkCa({ cert: ca.cert, key: other.key }, NOW), { instanceOf: TlsError, message: /does not belong/ });
  const leaf = await issueServerCertificate(ca, ['127.0.0.1'], NOW, 3600);
  t.throws(() => checkCa(leaf, NOW), { message: /not a CA certificate/ });
  t.throws(() => checkCa({ cert: ca.cert, key: 'not a key' }, NOW), { message: /^the CA key is not a PEM private key/ });
  t.throws(() => checkCa(ca, new Date(NOW.getTime() + 4000 * DAY)), { message: /expired/ });
});

test('an RSA CA of the operator signs server certificates too', async (t) => {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keys = {
    privateKey: await crypto.subtle.importKey(
      'pkcs8',
      privateKey.export({ type: 'pkcs8', format: 'der' }),
      { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      true,
      ['sign'],
    ),
    publicKey: await crypto.subtle.importKey('spki', publicKey.export({ type: 'spki', format: 'der' }), { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, [
      'verify',
    ]),
  };
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=operator RSA CA',
    keys,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 365 * DAY),
    signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as never,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  const ca = checkCa({ cert: cert.toString('pem'), key: privateKey.export({ type: 'pkcs1', format: 'pem' }).toString() }, new Date());
  const issued = await issueServerCertificate(ca, ['127.0.0.1'], new Date(), 3600);
  await t.notThrowsAsync(handshake(issued, ca.cert, '127.0.0.1'));
});

/** A TLS offering as far as the renewal pass and credentials look at it. */
const definition = {
  offering: { id: 'svc', name: 'pg', plans: [] },
  tls: {
    dir: '/etc/osb-tls',
    uid: 999,
    gid: 999,
    port: 'main',
    credentials: { ca_certificate: '{tls.ca}', ssl: { ca: '{tls.ca}', missing: '{tls.none}' }, empty: { x: '{tls.none}' }, sslmode: 'verify-full' },
    requireTlsCredentials: { uri: 'pg://{host}:{port}?sslmode=verify-full' },
  },
  credentials: { uri: 'pg://{host}:{port}' },
} as unknown as ServiceDefinition;

class FakeTlsStore implements TlsStore {
  ca?: { cert: string; secrets: { key: string } };
  certs = new Map<string, StoredCertificate>();
  leases = new Set<string>();
  instances: InstanceRecord[] = [];
  async getTlsCa() {
    return this.ca;
  }
  async putTlsCaIfAbsent(ca: { cert: string; secrets: { key: string } }) {
    if (this.ca) return false;
    this.ca = ca;
    return true;
  }
  async getInstanceTls(id: string) {
    return this.certs.get(id);
  }
  async putInstanceTls(id: string, record: StoredCertificate) {
    this.certs.set(id, record);
  }
  async listInstances() {
    return this.instances;
  }
  async claimLease(name: string) {
    if (this.leases.has(name)) return false;
    this.leases.add(name);
    return true;
  }
}

const instance = { id: 'i1', serviceId: 'svc', state: 'ready', advertisedHost: undefined } as unknown as InstanceRecord;
const config = { brokerId: 'b1', advertisedHost: '127.0.0.1', tlsCertSeconds: 90 * 86400, tlsRenewCheckSeconds: 3600 };
const log = createLogger('silent');
/** Renews right in the pass, as the broker's tls-renewal operation does (tested in lifecycle-rules and on Swarm). */
const direct = (tls: InstanceTls, now: Date) => async (due: InstanceRecord) => Boolean(await tls.renew(due, { now }));

test('replicas share one CA: the first one written wins, the others read it back', async (t) => {
  const store = new FakeTlsStore();
  const parts = { store, config, offerings: new Offerings([definition]), log };
  const first = new InstanceTls({ ...parts, owner: 'a' });
  const second = new InstanceTls({ ...parts, owner: 'b' });
  await Promise.all([first.start(NOW), second.start(NOW)]);
  t.is(first.caCertificate(), second.caCertificate());
  t.is(first.caCertificate(), store.ca!.cert);
});

test('the renewal pass renews a due certificate once across replicas, delivers it and reloads the engine', async (t) => {
  const store = new FakeTlsStore();
  store.instances = [instance];
  const delivered: string[] = [];
  const putFiles = async (_container: string, folder: string, files: Array<{ name: string; mode: number }>) => {
    delivered.push(`${folder}:${files.map((file) => `${file.name}@${file.mode.toString(8)}`).join(',')}`);
  };
  const delivery = {
    locate: async () => ({ engine: { putFiles }, container: 'c1' }) as never,
    reloadTls: async () => {
      delivered.push('reload');
    },
  };
  const parts = { store, config, offerings: new Offerings([definition]), log, delivery };
  const a = new InstanceTls({ ...parts, owner: 'a' });
  const b = new InstanceTls({ ...parts, owner: 'b' });
  await a.start(NOW);
  await b.start(NOW);
  const first = await a.certificate(instance, NOW);
  t.is(await a.renewalPass(3_600_000, direct(a, new Date(NOW.getTime() + 59 * DAY)), new Date(NOW.getTime() + 59 * DAY)), 0, 'not due yet');
  t.deepEqual(delivered, []);
  const later = new Date(NOW.getTime() + 61 * DAY);
  const counts = await Promise.all([a.renewalPass(3_600_000, direct(a, later), later), b.renewalPass(3_600_000, direct(b, later), later)]);
  t.deepEqual(counts.sort(), [0, 1], 'one replica renews');
  t.deepEqual(delivered, ['/etc/osb-tls:ca.pem@644,cert.pem@644,key.pem@600', 'reload']);
  const renewed = store.certs.get(instance.id)!;
  t.not(renewed.serial, first.serial);
  t.is(renewed.pending, undefined);
  t.true(Date.parse(renewed.notAfter) > Date.parse(first.notAfter));
});

test('a renewal whose delivery failed stays pending and is delivered by the next pass', async (t) => {
  const store = new FakeTlsStore();
  store.instances = [instance];
  let reachable = false;
  const delivery = {
    locate: async () => {
      if (!reachable) throw new Error('container down');
      return { engine: { putFiles: async () => {} }, container: 'c1' } as never;
    },
    reloadTls: async () => {},
  };
  const tls = new InstanceTls({ store, config, offerings: new Offerings([definition]), log, owner: 'a', delivery });
  await tls.start(NOW);
  await tls.certificate(instance, NOW);
  const later = new Date(NOW.getTime() + 61 * DAY);
  t.is(await tls.renewalPass(3_600_000, direct(tls, later), later), 0);
  const pending = store.certs.get(instance.id)!;
  t.true(pending.pending);
  reachable = true;
  t.is(await tls.renewalPass(3_600_000, direct(tls, new Date(later.getTime() + 3_600_000)), new Date(later.getTime() + 3_600_000)), 1);
  t.is(store.certs.get(instance.id)!.serial, pending.serial, 'the same certificate, delivered now');
  t.is(store.certs.get(instance.id)!.pending, undefined);
});

test('on Swarm a new task gets the current files; a renewal hands new files to the runtime, which replaces the task', async (t) => {
  const store = new FakeTlsStore();
  store.instances = [instance];
  const replaced: string[] = [];
  let reachable = false;
  const delivery = {
    replaceTls: async (_definition: unknown, _instance: unknown, files: TlsFiles) => {
      if (!reachable) throw new Error('its node is down');
      replaced.push(files.serial);
    },
  };
  const tls = new InstanceTls({ store, config, offerings: new Offerings([definition]), log, owner: 'a', delivery });
  await tls.start(NOW);
  const first = (await tls.current(definition, instance, NOW))!;
  const stored = store.certs.get(instance.id)!;
  t.is(first.serial, stored.serial);
  t.deepEqual(
    first.files.map((file) => `${first.dir}/${file.name}@${file.mode.toString(8)}:${file.uid}:${file.gid}`),
    ['/etc/osb-tls/ca.pem@644:999:999', '/etc/osb-tls/cert.pem@644:999:999', '/etc/osb-tls/key.pem@600:999:999'],
  );
  t.is(first.files[2]!.content.toString(), stored.secrets.key);
  t.is((await tls.current(definition, instance, NOW))!.serial, first.serial, 'the same certificate until it is due');

  // The runtime cannot replace the task now: the renewed certificate stays pending, and the next new task gets it.
  const later = new Date(NOW.getTime() + 61 * DAY);
  t.is(await tls.renewalPass(3_600_000, direct(tls, later), later), 0);
  const pending = store.certs.get(instance.id)!;
  t.true(pending.pending);
  t.not(pending.serial, first.serial);
  const next = (await tls.current(definition, instance, later))!;
  t.is(next.serial, pending.serial);
  await next.delivered();
  t.is(store.certs.get(instance.id)!.pending, undefined);

  reachable = true;
  const much = new Date(NOW.getTime() + 125 * DAY);
  t.is(await tls.renewalPass(3_600_000, direct(tls, much), much), 1);
  t.deepEqual(replaced, [store.certs.get(instance.id)!.serial]);
  t.not(replaced[0], pending.serial);
  t.is(store.certs.get(instance.id)!.pending, undefined);
});

test('credentials: {tls.ca} fills nested fields, empty objects are left out, require_tls swaps the uri', (t) => {
  const values = { host: 'h', port: 5, tls: { ca: 'PEM' } };
  const plain = renderCredentials(credentialsTemplate(definition, {}, true), values);
  t.deepEqual(plain, { uri: 'pg://h:5', ca_certificate: 'PEM', ssl: { ca: 'PEM' }, sslmode: 'verify-full' });
  const required = renderCredentials(credentialsTemplate(definition, { require_tls: true }, true), values);
  t.is(required.uri, 'pg://h:5?sslmode=verify-full');
  t.deepEqual(renderCredentials(credentialsTemplate(definition, { require_tls: true }, false), values), { uri: 'pg://h:5' }, 'no TLS delivered: no TLS fields');
});

test('the catalog refuses tls without scripts/reload-tls, and a tls.dir inside the volume', async (t) => {
  const { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const { loadCatalog } = await import('../../src/catalog/load.js');
  const root = mkdtempSync(path.join(tmpdir(), 'osb-tls-catalog-'));
  try {
    const folder = path.join(root, 'postgresql');
    cpSync('catalog/postgresql', folder, { recursive: true });
    t.is(loadCatalog(root, 'x/')[0]!.tls?.dir, '/etc/osb-tls');
    const file = path.join(folder, 'service.json');
    const json = JSON.parse(readFileSync(file, 'utf8')) as { tls: { dir: string } };
    json.tls.dir = '/var/lib/postgresql/data/tls';
    writeFileSync(file, JSON.stringify(json));
    t.throws(() => loadCatalog(root, 'x/'), { message: /tls\.dir must be outside container\.data_path/ });
    rmSync(path.join(folder, 'scripts', 'reload-tls'));
    t.throws(() => loadCatalog(root, 'x/'), { message: /scripts\/reload-tls is missing/ });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
