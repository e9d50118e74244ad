// X.509 issuance for the broker's CA and the instances' server certificates. @peculiar/x509 builds and signs the
// certificates with Node's WebCrypto; Node's own X509Certificate reads them back. Keys are ECDSA P-256.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';

// The WebCrypto types of node:crypto (the project's TypeScript has no DOM library).
type CryptoKey = webcrypto.CryptoKey;
type EcdsaParams = webcrypto.EcdsaParams;
type EcKeyImportParams = webcrypto.EcKeyImportParams;
type RsaHashedImportParams = webcrypto.RsaHashedImportParams;
type Algorithm = webcrypto.Algorithm;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const DAY_MS = 86_400_000;
/** A certificate is renewed once this share of its life has passed (e.g. after 60 of 90 days). */
export const RENEW_AT_SHARE = 2 / 3;
/** Clocks of clients and servers differ a little: a certificate is valid from slightly before it was made. */
const BACKDATE_MS = 5 * 60_000;

/** A certificate and its private key, both PEM. The key is a secret: sealed at rest, never logged. */
export interface KeyPair {
  cert: string;
  key: string;
}

/** What the broker keeps about a certificate besides the PEM: enough to decide when it is renewed. */
export interface CertificateFacts {
  serial: string;
  notBefore: string;
  notAfter: string;
}

/**
 * An instance's server certificate as the state store keeps it: the key sealed, the names it was issued for, and
 * `pending` while a renewed certificate has not reached the running container yet.
 */
export interface StoredCertificate extends CertificateFacts {
  cert: string;
  hosts: string[];
  pending?: boolean;
  secrets: { key: string };
}

export class TlsError extends Error {}

/** A new self-signed CA of ECDSA P-256, valid `days` from `now`, named after the broker. */
export async function createCa(brokerId: string, now: Date, days = 3650): Promise<KeyPair> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=osb-docker-broker ${brokerId} CA, O=osb-docker-broker`,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + days * DAY_MS),
    keys,
    signingAlgorithm: { ...EC_P256, hash: 'SHA-256' } as EcdsaParams,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString('pem'), key: await exportKey(keys.privateKey) };
}

/**
 * Checks a CA an operator supplies: the certificate is a CA (basic constraints), the key is its key, and it is valid
 * now. ECDSA (P-256, P-384) and RSA keys are accepted, in PKCS#8, SEC1 or PKCS#1 PEM; the key is kept as PKCS#8.
 */
export function checkCa(pair: KeyPair, now: Date): KeyPair {
  let certificate: X509Certificate;
  let key: KeyObject;
  try {
    certificate = new X509Certificate(pair.cert);
  } catch (error) {
    throw new TlsError(`the CA certificate is not a PEM X.509 certificate (${(error as Error).message})`);
  }
  try {
    key = createPrivateKey(pair.key);
  } catch {
    // No cause: the parser's message could quote the key.
    throw new TlsError('the CA key is not a PEM private key without a passphrase');
  }
  if (!certificate.ca) throw new TlsError('the CA certificate is not a CA certificate (basic constraints CA:TRUE is missing)');
  if (!certificate.checkPrivateKey(key)) throw new TlsError('the CA key does not belong to the CA certificate');
  if (Date.parse(certificate.validTo) <= now.getTime()) throw new TlsError(`the CA certificate expired on ${new Date(certificate.validTo).toISOString()}`);
  signingAlgorithmOf(key);
  return { cert: certificate.toString(), key: key.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/**
 * A server certificate for `hosts` (IP addresses and DNS names, all in the subject alternative names), signed by the
 * CA, with a key of its own, valid `seconds` from `now`.
 */
export async function issueServerCertificate(ca: KeyPair, hosts: string[], now: Date, seconds: number): Promise<KeyPair & CertificateFacts> {
  if (hosts.length === 0) throw new TlsError('a server certificate needs at least one host name or address');
  const caCert = new x509.X509Certificate(ca.cert);
  const caKey = createPrivateKey(ca.key);
  const algorithm = signingAlgorithmOf(caKey);
  const signingKey = await webcrypto.subtle.importKey('pkcs8', caKey.export({ type: 'pkcs8', format: 'der' }), algorithm.import, false, ['sign']);
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  const notAfter = new Date(now.getTime() + seconds * 1000);
  const caNotAfter = caCert.notAfter;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${hosts[0]}`,
    issuer: caCert.subject,
    notBefore,
    // Never beyond the CA: a client would refuse the chain from then on anyway.
    notAfter: notAfter > caNotAfter ? caNotAfter : notAfter,
    publicKey: keys.publicKey,
    signingKey,
    signingAlgorithm: algorithm.sign,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(hosts.map((host) => (isIP(host) ? { type: 'ip', value: host } : { type: 'dns', value: host }))),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  const pem = cert.toString('pem');
  return { cert: pem, key: await exportKey(keys.privateKey), ...certificateFacts(pem) };
}

/** Serial (hex, upper case), start and end of validity (ISO 8601) of a PEM certificate. */
export function certificateFacts(pem: string): CertificateFacts {
  const certificate = new X509Certificate(pem);
  return {
    serial: certificate.serialNumber.toUpperCase(),
    notBefore: new Date(certificate.validFrom).toISOString(),
    notAfter: new Date(certificate.validTo).toISOString(),
  };
}

/** When a certificate is due for renewal: at RENEW_AT_SHARE of its life (the backdating left out). */
export function renewalDue(facts: Pick<CertificateFacts, 'notBefore' | 'notAfter'>): Date {
  const start = Date.parse(facts.notBefore) + BACKDATE_MS;
  const end = Date.parse(facts.notAfter);
  return new Date(start + Math.max(0, end - start) * RENEW_AT_SHARE);
}

/** Whether a certificate must be replaced at `now`: it is due, or it names other hosts than those wanted (the advertised host changed). */
export function needsRenewal(facts: Pick<CertificateFacts, 'notBefore' | 'notAfter'> & { hosts: string[] }, wanted: string[], now: Date): boolean {
  const sameHosts = facts.hosts.length === wanted.length && facts.hosts.every((host, index) => host === wanted[index]);
  return !sameHosts || now.getTime() >= renewalDue(facts).getTime();
}

/** Whether `certPem` was signed by the CA of `caPem` (a certificate of a CA replaced since is not). */
export function issuedBy(certPem: string, caPem: string): boolean {
  const cert = new X509Certificate(certPem);
  const ca = new X509Certificate(caPem);
  return cert.checkIssued(ca) && cert.verify(ca.publicKey);
}

/** A positive 128-bit serial number, as hex (the top bit cleared so that DER keeps it positive). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return bytes.toString('hex');
}

async function exportKey(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** How a CA key signs: ECDSA with the curve's hash, or RSA PKCS#1 v1.5 with SHA-256. */
function signingAlgorithmOf(key: KeyObject): { import: EcKeyImportParams | RsaHashedImportParams; sign: EcdsaParams | Algorithm } {
  const type = key.asymmetricKeyType;
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return { import: EC_P256, sign: { name: 'ECDSA', hash: 'SHA-256' } };
    if (curve === 'secp384r1') return { import: { name: 'ECDSA', namedCurve: 'P-384' }, sign: { name: 'ECDSA', hash: 'SHA-384' } };
    throw new TlsError(`the CA key's curve ${curve} is not supported (P-256 or P-384)`);
  }
  if (type === 'rsa') return { import: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, sign: { name: 'RSASSA-PKCS1-v1_5' } };
  throw new TlsError(`the CA key's type ${type} is not supported (ECDSA P-256, P-384 or RSA)`);
}

/** The public half of a PEM private key, as PEM: lets tests and checks compare keys without handling the secret. */
export function publicKeyOf(keyPem: string): string {
  return createPublicKey(keyPem).export({ type: 'spki', format: 'pem' }).toString();
}
