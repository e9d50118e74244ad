import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** Folder that holds package.json, catalog/ and images/ (this file runs from dist/src/). */
export const PACKAGE_ROOT = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));

export interface Config {
  listenHost: string;
  listenPort: number;
  /** Undefined: http://<listen host>:<the port actually listened on>. */
  publicUrl?: string;
  username: string;
  /** Undefined: generated on first start and kept in the state folder. */
  password?: string;
  brokerId: string;
  redisUrl?: string;
  /** Host port of the broker's own Redis (no REDIS_URL); undefined: a free one is chosen once, when it is created. */
  statePort?: number;
  /** How long one Redis command may take before the request answers 503. */
  redisCommandTimeoutMs: number;
  /** 32 bytes; undefined: generated on first start and kept in the state folder. */
  encryptionKey?: Buffer;
  stateDir: string;
  catalogDir: string;
  imagesDir: string;
  imagePrefix: string;
  baseImage?: string;
  publishIp: string;
  advertisedHost: string;
  /** Where the broker itself reaches the published ports when it checks them (another address from inside a container). */
  probeHost: string;
  portRange: { first: number; last: number };
  /** How long one backup or restore script may run (dumps of gigabytes take a while). */
  backupTimeoutSeconds: number;
  /** `docker`: instances are containers on one engine; `swarm`: services spread over a Swarm's nodes. */
  orchestrator: 'docker' | 'swarm';
  /** Folder with ca.pem, cert.pem and key.pem for the nodes' engines (io.osb-broker.engine), when they speak TLS. */
  nodeTlsDir?: string;
  removeOrphans: boolean;
  tombstoneSeconds: number;
  dashboardLinkSeconds: number;
  dashboardSessionSeconds: number;
  /** Dashboard sign-in with Cloud Foundry's UAA (BROKER_SSO_*); undefined: off, every platform uses links. */
  sso?: SsoConfig;
  bodyLimitBytes: number;
  /** An operation's lease lives this long without renewal: a dead process's work is taken over after about this. */
  leaseSeconds: number;
  /** How often every process looks for operations nobody holds. */
  sweepSeconds: number;
  /** How long in-flight requests may finish after SIGTERM. */
  shutdownSeconds: number;
  /** How long a lifecycle script (setup, bind, ...) may run inside the container before it is stopped. */
  scriptTimeoutSeconds: number;
  /** How often the reconciler compares every ready instance with the engine (it also follows its events); 0: off. */
  reconcileSeconds: number;
  /** How often one replica runs every instance's stats script for /metrics; 0: off (the dashboard still asks on request). */
  engineStatsSeconds: number;
  logLevel: string;
  /** json or pretty; undefined: pretty when stdout is a terminal, JSON otherwise. */
  logFormat?: 'json' | 'pretty';
  /** A second listener serving GET /metrics without credentials; undefined: /metrics only on the main port, with them. */
  metricsListen?: { host: string; port: number };
  /** The operator's CA for the instances' TLS certificates (PEM); undefined: the broker's own, made once and kept sealed in Redis. */
  tlsCa?: { cert: string; key: string };
  /** Validity of an instance's server certificate; it is renewed at two thirds of it. */
  tlsCertSeconds: number;
  /** How often one replica looks for certificates due for renewal. */
  tlsRenewCheckSeconds: number;
  /** How often one replica samples every running instance's CPU, memory, network and block I/O; 0: off. */
  usageSampleSeconds: number;
  /** How often it measures each instance's data volume (du in the container, which costs more). */
  usageDiskSeconds: number;
  /** How far back the samples go (the dashboard's charts). */
  usageKeepSeconds: number;
}

/** Cloud Foundry dashboard SSO: each offering's dashboard client is `<clientId>-<offering name>` (Cloud Controller wants them unique). */
export interface SsoConfig {
  clientId: string;
  clientSecret: string;
  /** UAA's issuer, e.g. https://uaa.sys.example.com/oauth/token; its /.well-known/openid-configuration is read. */
  issuer: string;
  cloudControllerUrl: string;
}

class ConfigError extends Error {}

/** A whole number from the environment within [min, max]; the fallback when unset. Shared by every settings reader. */
export function int(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max} (got "${raw}")`);
  }
  return value;
}

function bool(env: NodeJS.ProcessEnv, name: string): boolean {
  return /^(1|true|yes)$/i.test(env[name] ?? '');
}

/** NAME, else the content of the file NAME_FILE names (a Docker or Kubernetes secret), without its final newline. */
export function secret(env: NodeJS.ProcessEnv, name: string): string | undefined {
  if (env[name]) return env[name];
  const file = env[`${name}_FILE`];
  if (!file) return undefined;
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '') || undefined;
  } catch (error) {
    throw new ConfigError(`${name}_FILE: cannot read ${file}: ${(error as Error).message}`);
  }
}

function encryptionKey(raw: string | undefined): Buffer | undefined {
  if (!raw) return undefined;
  const key = /^[0-9a-f]{64}$/i.test(raw) ? Buffer.from(raw, 'hex') : Buffer.from(raw, 'base64');
  if (key.length !== 32) throw new ConfigError('BROKER_ENCRYPTION_KEY must be 32 bytes, as 64 hex digits or base64');
  return key;
}

function portRange(raw: string): { first: number; last: number } {
  const match = /^(\d+)-(\d+)$/.exec(raw);
  const first = Number(match?.[1]);
  const last = Number(match?.[2]);
  if (!match || first < 1024 || last > 65535 || first > last) {
    throw new ConfigError(`BROKER_PORT_RANGE must look like 40000-40999 within 1024-65535 (got "${raw}")`);
  }
  return { first, last };
}

function orchestrator(raw: string | undefined): Config['orchestrator'] {
  if (!raw || raw === 'docker') return 'docker';
  if (raw === 'swarm') return 'swarm';
  throw new ConfigError(`BROKER_ORCHESTRATOR must be docker or swarm (got "${raw}")`);
}

function logFormat(raw: string | undefined): Config['logFormat'] {
  if (!raw || raw === 'auto') return undefined;
  if (raw === 'json' || raw === 'pretty') return raw;
  throw new ConfigError(`BROKER_LOG_FORMAT must be json, pretty or auto (got "${raw}")`);
}

/** "host:port", "[v6 address]:port" or a port alone (on 127.0.0.1). */
function listenAddress(name: string, raw: string | undefined): { host: string; port: number } | undefined {
  if (!raw) return undefined;
  const match = /^(?:\[([0-9a-fA-F:.]+)\]:|([^:[\]]+):)?(\d{1,5})$/.exec(raw);
  const port = Number(match?.[3]);
  if (!match || port > 65535) throw new ConfigError(`${name} must look like 127.0.0.1:9464, [::1]:9464 or 9464 (got "${raw}")`);
  return { host: match[1] ?? match[2] ?? '127.0.0.1', port };
}

/** The operator's CA: certificate and key both, or neither. */
function tlsCa(env: NodeJS.ProcessEnv): Config['tlsCa'] {
  const cert = secret(env, 'BROKER_TLS_CA_CERT');
  const key = secret(env, 'BROKER_TLS_CA_KEY');
  if (!cert && !key) return undefined;
  if (!cert || !key) throw new ConfigError('BROKER_TLS_CA_CERT and BROKER_TLS_CA_KEY (or their _FILE forms) go together: set both or neither');
  return { cert, key };
}

/** https, or http to this host only: UAA and Cloud Controller are sent codes, client secrets and users' tokens. */
function trustedUrl(name: string, raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`${name} must be a URL (got "${raw}")`);
  }
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback))
    throw new ConfigError(`${name} must be an https:// URL (http:// only to localhost)`);
  return raw.replace(/\/+$/, '');
}

/** Dashboard SSO: the four settings together, or none; UAA sends browsers back to the broker's public URL. */
function sso(env: NodeJS.ProcessEnv, publicUrl: string | undefined): SsoConfig | undefined {
  const values = {
    BROKER_SSO_CLIENT_ID: env.BROKER_SSO_CLIENT_ID,
    BROKER_SSO_CLIENT_SECRET: secret(env, 'BROKER_SSO_CLIENT_SECRET'),
    BROKER_SSO_UAA_URL: env.BROKER_SSO_UAA_URL,
    BROKER_CLOUD_CONTROLLER_URL: env.BROKER_CLOUD_CONTROLLER_URL,
  };
  const missing = Object.entries(values)
    .filter(([, value]) => !value)
    .map(([name]) => name);
  if (missing.length === 4) return undefined;
  if (missing.length > 0)
    throw new ConfigError(
      `dashboard sign-in needs BROKER_SSO_CLIENT_ID, BROKER_SSO_CLIENT_SECRET, BROKER_SSO_UAA_URL and BROKER_CLOUD_CONTROLLER_URL together (missing: ${missing.join(', ')})`,
    );
  if (!publicUrl)
    throw new ConfigError('dashboard sign-in (BROKER_SSO_*) needs BROKER_PUBLIC_URL: UAA sends browsers back to <BROKER_PUBLIC_URL>/dashboard/sso/callback');
  if (!/^[A-Za-z0-9._-]{1,60}$/.test(values.BROKER_SSO_CLIENT_ID!))
    throw new ConfigError('BROKER_SSO_CLIENT_ID must be 1-60 characters of A-Z, a-z, 0-9, ".", "_" and "-"');
  return {
    clientId: values.BROKER_SSO_CLIENT_ID!,
    clientSecret: values.BROKER_SSO_CLIENT_SECRET!,
    issuer: trustedUrl('BROKER_SSO_UAA_URL', values.BROKER_SSO_UAA_URL!),
    cloudControllerUrl: trustedUrl('BROKER_CLOUD_CONTROLLER_URL', values.BROKER_CLOUD_CONTROLLER_URL!),
  };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const listenPort = int(env, 'PORT', 8080, 0, 65535);
  const listenHost = env.BROKER_LISTEN_HOST || '127.0.0.1';
  const publishIp = env.BROKER_PUBLISH_IP || '127.0.0.1';
  const brokerId = env.BROKER_ID || 'default';
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(brokerId)) {
    throw new ConfigError('BROKER_ID must be 1-31 characters of a-z, 0-9 and "-"');
  }
  const wildcard = publishIp === '0.0.0.0' || publishIp === '::';
  return {
    listenHost,
    listenPort,
    publicUrl: env.BROKER_PUBLIC_URL ? env.BROKER_PUBLIC_URL.replace(/\/+$/, '') : undefined,
    username: env.BROKER_USERNAME || 'broker',
    password: secret(env, 'BROKER_PASSWORD'),
    brokerId,
    redisUrl: secret(env, 'REDIS_URL'),
    statePort: env.BROKER_STATE_PORT ? int(env, 'BROKER_STATE_PORT', 0, 1024, 65535) : undefined,
    redisCommandTimeoutMs: int(env, 'REDIS_COMMAND_TIMEOUT_MS', 2000, 50, 60_000),
    encryptionKey: encryptionKey(secret(env, 'BROKER_ENCRYPTION_KEY')),
    stateDir: path.resolve(env.BROKER_STATE_DIR || '.broker-state'),
    catalogDir: path.resolve(env.BROKER_CATALOG_DIR || path.join(PACKAGE_ROOT, 'catalog')),
    imagesDir: path.join(PACKAGE_ROOT, 'images'),
    imagePrefix: env.BROKER_IMAGE_PREFIX || 'osb-broker/',
    baseImage: env.BASE_IMAGE || undefined,
    publishIp,
    advertisedHost: env.BROKER_ADVERTISED_HOST || (wildcard ? hostname() : publishIp),
    probeHost: env.BROKER_PROBE_HOST || (publishIp === '0.0.0.0' ? '127.0.0.1' : publishIp === '::' ? '::1' : publishIp),
    portRange: portRange(env.BROKER_PORT_RANGE || '40000-40999'),
    orchestrator: orchestrator(env.BROKER_ORCHESTRATOR),
    backupTimeoutSeconds: int(env, 'BROKER_BACKUP_TIMEOUT_SECONDS', 3600, 10, 7 * 86400),
    nodeTlsDir: env.BROKER_NODE_TLS_DIR ? path.resolve(env.BROKER_NODE_TLS_DIR) : undefined,
    removeOrphans: bool(env, 'BROKER_REMOVE_ORPHANS'),
    tombstoneSeconds: int(env, 'BROKER_TOMBSTONE_SECONDS', 3600, 1, 30 * 86400),
    dashboardLinkSeconds: int(env, 'BROKER_DASHBOARD_LINK_SECONDS', 86400, 10, 30 * 86400),
    dashboardSessionSeconds: int(env, 'BROKER_DASHBOARD_SESSION_SECONDS', 8 * 3600, 10, 30 * 86400),
    sso: sso(env, env.BROKER_PUBLIC_URL),
    bodyLimitBytes: int(env, 'BROKER_BODY_LIMIT_BYTES', 1024 * 1024, 1024, 64 * 1024 * 1024),
    leaseSeconds: int(env, 'BROKER_LEASE_SECONDS', 10, 2, 600),
    sweepSeconds: int(env, 'BROKER_SWEEP_SECONDS', 2, 1, 60),
    shutdownSeconds: int(env, 'BROKER_SHUTDOWN_SECONDS', 25, 0, 600),
    scriptTimeoutSeconds: int(env, 'BROKER_SCRIPT_TIMEOUT_SECONDS', 60, 1, 3600),
    reconcileSeconds: int(env, 'BROKER_RECONCILE_SECONDS', 30, 0, 86400),
    engineStatsSeconds: int(env, 'BROKER_ENGINE_STATS_SECONDS', 30, 0, 86400),
    logLevel: env.LOG_LEVEL || 'info',
    logFormat: logFormat(env.BROKER_LOG_FORMAT),
    metricsListen: listenAddress('BROKER_METRICS_LISTEN', env.BROKER_METRICS_LISTEN),
    tlsCa: tlsCa(env),
    tlsCertSeconds: int(env, 'BROKER_TLS_CERT_SECONDS', 90 * 86400, 60, 825 * 86400),
    tlsRenewCheckSeconds: int(env, 'BROKER_TLS_RENEW_CHECK_SECONDS', 3600, 1, 86400),
    usageSampleSeconds: int(env, 'BROKER_USAGE_SAMPLE_SECONDS', 10, 0, 3600),
    usageDiskSeconds: int(env, 'BROKER_USAGE_DISK_SECONDS', 60, 1, 86400),
    usageKeepSeconds: int(env, 'BROKER_USAGE_KEEP_SECONDS', 3600, 60, 7 * 86400),
  };
}

export { ConfigError };
