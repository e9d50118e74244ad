import { randomBytes } from 'node:crypto';
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { CliError } from './errors.js';
import type { BoundService } from './vcap.js';

/**
 * The Service Binding for Kubernetes spec (servicebinding.io): a workload finds each binding as a folder under
 * $SERVICE_BINDING_ROOT, one file per entry, and `type` says what it is. The type names are those the consumers
 * look for: Spring Cloud Bindings (postgresql, mysql, redis, rabbitmq) and the npm kube-service-bindings
 * (POSTGRESQL, MYSQL, REDIS, AMQP, which also takes rabbitmq). The others have no consumer library to match.
 */
const TYPE_OF_OFFERING: Record<string, string> = {
  postgresql: 'postgresql',
  mariadb: 'mysql', // MariaDB speaks MySQL's protocol; neither library knows a mariadb type
  redis: 'redis',
  rabbitmq: 'rabbitmq',
  mqtt: 'mqtt',
  memcached: 'memcached',
  'syslog-drain': 'syslog',
};

/** Offerings added to the catalog later: the first tag that is a known type, else the offering's name. */
const KNOWN_TYPES = new Set(['postgresql', 'mysql', 'redis', 'rabbitmq', 'mongodb', 'kafka', 'mqtt', 'memcached']);

export const PROVIDER = 'osb-docker-broker';

export function bindingType(offering: BoundService['offering']): string {
  return TYPE_OF_OFFERING[offering.name] ?? offering.tags?.find((tag) => KNOWN_TYPES.has(tag)) ?? offering.name;
}

/** The folder and Secret name of a binding: its name (as a ServiceBinding resource names its folder), else its id. */
export function bindingFolderName(bound: BoundService): string {
  return bound.binding.name ?? bound.binding.id;
}

/** Entry names are file names and Secret keys: letters, digits, '-', '_' and '.'. */
const ENTRY_NAME = /^[A-Za-z0-9_.-]+$/;

/**
 * The entries of one binding, in the order they are listed. The well-known ones of the spec (type, provider, host,
 * port, uri, username, password) come first, then what the consumers read by name: database; jdbc-url (Spring's
 * JDBC URL, for postgresql and mysql); virtual-host (Spring's RabbitMQ); servers (memcached); ca.crt when the
 * credentials carry a CA (ca_certificate), and for PostgreSQL also root.crt (kube-service-bindings' pg mapping) and
 * sslrootcert naming that file (Spring's PostgreSQL); sslmode where the credentials have one. Values are text;
 * a field the credentials lack is left out.
 */
export function bindingEntries(bound: BoundService): Record<string, string> {
  const credentials = bound.binding.credentials;
  const text = (key: string): string | undefined => {
    const value = credentials[key];
    return typeof value === 'string' && value !== '' ? value : typeof value === 'number' ? String(value) : undefined;
  };
  const type = bindingType(bound.offering);
  const ca = text('ca_certificate');
  const entries: Record<string, string | undefined> = {
    type,
    provider: PROVIDER,
    host: text('host') ?? text('hostname'),
    port: text('port'),
    uri: text('uri') ?? bound.binding.syslog_drain_url,
    username: text('username'),
    password: text('password'),
    database: text('database'),
    'jdbc-url': text('jdbcUrl'),
    'virtual-host': text('vhost'),
    servers: text('servers'),
    'ca.crt': ca,
    ...(ca && type === 'postgresql' ? { 'root.crt': ca, sslrootcert: 'ca.crt' } : {}),
    sslmode: text('sslmode'),
  };
  return Object.fromEntries(Object.entries(entries).filter((entry): entry is [string, string] => entry[1] !== undefined));
}

/** Folder names must be one path segment that a Kubernetes volume could also hold. */
function checkFolderName(name: string): string {
  if (!ENTRY_NAME.test(name) || name === '.' || name === '..') {
    throw new CliError(`binding name "${name}" cannot be a folder name (letters, digits, '-', '_' and '.' only); bind again with --as <name>`);
  }
  return name;
}

/**
 * Writes the projection under root: one folder per binding (mode 0700), one file per entry (mode 0600). A folder
 * of the same name is replaced whole, so entries from before (a ca.crt, say) never linger. Returns the folders.
 */
export async function writeServiceBindingRoot(root: string, bound: BoundService[]): Promise<{ folder: string; type: string; entries: string[] }[]> {
  const names = bound.map((service) => checkFolderName(bindingFolderName(service)));
  const twice = names.find((name, index) => names.indexOf(name) !== index);
  if (twice) throw new CliError(`two bindings are named "${twice}"; a projection needs one folder per binding`);
  await mkdir(root, { recursive: true, mode: 0o700 });
  const written = [];
  for (const [index, service] of bound.entries()) {
    const folder = path.join(root, names[index]!);
    const entries = bindingEntries(service);
    // Written beside the target first, then swapped in, so a reader sees the old folder or the new one.
    const staging = path.join(root, `.${names[index]}.${randomBytes(4).toString('hex')}`);
    await mkdir(staging, { mode: 0o700 });
    try {
      for (const [name, value] of Object.entries(entries)) {
        await writeFile(path.join(staging, name), value, { mode: 0o600, flag: 'wx' });
      }
      await chmod(staging, 0o700); // mkdir's mode is narrowed by the umask only, never widened; say it outright
      await rm(folder, { recursive: true, force: true });
      await rename(staging, folder);
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
    written.push({ folder, type: entries.type!, entries: Object.keys(entries) });
  }
  return written;
}

/** A Kubernetes Secret name: a DNS subdomain (lowercase letters, digits, '-' and '.'), at most 253 characters. */
export function secretName(name: string): string {
  const cleaned = name
    .toLowerCase()
    .replace(/[^a-z0-9.-]+/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '')
    .slice(0, 253)
    .replace(/[^a-z0-9]+$/, '');
  if (!cleaned) throw new CliError(`binding name "${name}" gives no Kubernetes Secret name; bind again with --as <name>`);
  return cleaned;
}

/**
 * The Secrets a ServiceBinding resource (or a volume of the workload) projects as the same folders: type
 * `servicebinding.io/<type>`, the entries as stringData. YAML documents, `---` between them, for kubectl apply -f -.
 */
export function k8sSecrets(bound: BoundService[]): string {
  const documents = bound.map((service) => {
    const entries = bindingEntries(service);
    return {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: {
        name: secretName(bindingFolderName(service)),
        labels: { 'app.kubernetes.io/managed-by': 'osb-docker' },
        annotations: { 'osb-docker/instance': service.instance.name, 'osb-docker/binding-id': service.binding.id },
      },
      type: `servicebinding.io/${entries.type}`,
      stringData: entries,
    };
  });
  const names = documents.map((document) => document.metadata.name);
  const twice = names.find((name, index) => names.indexOf(name) !== index);
  if (twice) throw new CliError(`two bindings give the Secret name "${twice}"; bind one again with --as <name>`);
  return documents.map((document) => stringify(document, { lineWidth: 0 })).join('---\n');
}
