import test from 'ava';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { parseCommandLine } from '../../src/cli/args.js';
import { UsageError } from '../../src/cli/errors.js';
import { bindingEntries, bindingType, k8sSecrets, secretName, writeServiceBindingRoot } from '../../src/cli/service-binding.js';
import type { BoundService } from '../../src/cli/vcap.js';

const kube = createRequire(import.meta.url)('kube-service-bindings') as {
  getBinding(type?: string, client?: string, options?: { bindingData?: Record<string, string> }): any;
};

const CA = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

const bound = (
  offering: string,
  credentials: Record<string, unknown>,
  name = `${offering}-binding`,
  extra: Partial<BoundService['binding']> = {},
): BoundService => ({
  offering: { name: offering, tags: [offering] },
  plan: 'small',
  instance: { id: `i-${offering}`, name: offering },
  binding: { id: `b-${offering}`, name, credentials, ...extra },
});

const pg = bound('postgresql', {
  uri: 'postgres://u1:p1@db.example:40000/shop',
  jdbcUrl: 'jdbc:postgresql://db.example:40000/shop?user=u1&password=p1',
  host: 'db.example',
  hostname: 'db.example',
  port: 40000,
  name: 'shop',
  database: 'shop',
  username: 'u1',
  password: 'p1',
  ca_certificate: CA,
  sslmode: 'verify-full',
  ssl: { ca: CA },
});
const redis = bound('redis', { uri: 'redis://u2:p2@cache.example:40001', host: 'cache.example', port: 40001, username: 'u2', password: 'p2' });

test('entries: the well-known ones, what Spring Cloud Bindings and kube-service-bindings read, nothing empty', (t) => {
  t.deepEqual(bindingEntries(pg), {
    type: 'postgresql',
    provider: 'osb-docker-broker',
    host: 'db.example',
    port: '40000',
    uri: 'postgres://u1:p1@db.example:40000/shop',
    username: 'u1',
    password: 'p1',
    database: 'shop',
    'jdbc-url': 'jdbc:postgresql://db.example:40000/shop?user=u1&password=p1',
    'ca.crt': CA,
    'root.crt': CA,
    sslrootcert: 'ca.crt',
    sslmode: 'verify-full',
  });
  t.deepEqual(bindingEntries(redis), {
    type: 'redis',
    provider: 'osb-docker-broker',
    host: 'cache.example',
    port: '40001',
    uri: 'redis://u2:p2@cache.example:40001',
    username: 'u2',
    password: 'p2',
  });
  // MariaDB is "mysql" to both libraries; RabbitMQ's vhost is Spring's virtual-host; memcached keeps its servers.
  t.is(bindingEntries(bound('mariadb', { host: 'h', port: 1 })).type, 'mysql');
  t.like(bindingEntries(bound('rabbitmq', { host: 'h', vhost: 'orders' })), { type: 'rabbitmq', 'virtual-host': 'orders' });
  t.like(bindingEntries(bound('memcached', { servers: 'h:1', username: 'u', password: 'p' })), { type: 'memcached', servers: 'h:1' });
  // The syslog drain has no credentials: its drain URL is the uri.
  t.deepEqual(bindingEntries(bound('syslog-drain', {}, 'logs', { syslog_drain_url: 'syslog://h:2' })), {
    type: 'syslog',
    provider: 'osb-docker-broker',
    uri: 'syslog://h:2',
  });
  // An offering added later: a known type among its tags, else its name.
  t.is(bindingType({ name: 'mongo', tags: ['document', 'mongodb'] }), 'mongodb');
  t.is(bindingType({ name: 'etcd', tags: ['key-value'] }), 'etcd');
});

test('the projection: one folder per binding (0700), one file per entry (0600), a folder replaced whole', async (t) => {
  const root = path.join(await mkdtemp(path.join(tmpdir(), 'sb-')), 'bindings');
  t.teardown(() => rm(path.dirname(root), { recursive: true, force: true }));
  const written = await writeServiceBindingRoot(root, [pg, redis]);
  t.deepEqual(
    written.map(({ folder, type }) => [path.basename(folder), type]),
    [
      ['postgresql-binding', 'postgresql'],
      ['redis-binding', 'redis'],
    ],
  );
  t.deepEqual((await readdir(root)).sort(), ['postgresql-binding', 'redis-binding']);
  t.is((await stat(root)).mode & 0o777, 0o700);
  for (const folder of ['postgresql-binding', 'redis-binding']) {
    t.is((await stat(path.join(root, folder))).mode & 0o777, 0o700, folder);
    for (const file of await readdir(path.join(root, folder))) t.is((await stat(path.join(root, folder, file))).mode & 0o777, 0o600, `${folder}/${file}`);
  }
  t.is(await readFile(path.join(root, 'postgresql-binding', 'ca.crt'), 'utf8'), CA);
  t.is(await readFile(path.join(root, 'redis-binding', 'port'), 'utf8'), '40001');

  // Written again without a CA: no ca.crt is left from before, and nothing else stays in the root.
  await writeFile(path.join(root, 'postgresql-binding', 'stale'), 'x');
  await writeServiceBindingRoot(root, [bound('postgresql', { host: 'h', port: 1 })]);
  t.deepEqual((await readdir(path.join(root, 'postgresql-binding'))).sort(), ['host', 'port', 'provider', 'type']);
  t.deepEqual((await readdir(root)).sort(), ['postgresql-binding', 'redis-binding']);

  // A binding name that is no folder name, or two bindings of one name, are refused before anything is written.
  await t.throwsAsync(writeServiceBindingRoot(root, [bound('redis', {}, '../escape')]), { message: /cannot be a folder name/ });
  await t.throwsAsync(writeServiceBindingRoot(root, [redis, redis]), { message: /two bindings are named "redis-binding"/ });
});

test('kube-service-bindings maps the projection to pg and ioredis options', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'sb-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  await writeServiceBindingRoot(root, [pg, redis]);
  const before = process.env.SERVICE_BINDING_ROOT;
  process.env.SERVICE_BINDING_ROOT = root;
  t.teardown(() => (before === undefined ? delete process.env.SERVICE_BINDING_ROOT : (process.env.SERVICE_BINDING_ROOT = before)));
  // The folders as kube-service-bindings reads them (getBinding() without a type: every binding's raw entries).
  const raw = kube.getBinding() as Record<string, string>[];
  const pgRaw = raw.find((entries) => entries.type === 'postgresql')!;
  const redisRaw = raw.find((entries) => entries.type === 'redis')!;
  t.like(kube.getBinding('POSTGRESQL', 'pg', { bindingData: pgRaw }), {
    user: 'u1',
    password: 'p1',
    host: 'db.example',
    port: '40000',
    database: 'shop',
    ssl: { ca: CA.trim() },
  });
  t.like(kube.getBinding('REDIS', 'ioredis', { bindingData: redisRaw }), { username: 'u2', password: 'p2', host: 'cache.example', port: '40001' });
  // Its own lookup by type finds the first folder's type only (2.1.0 fails on the others): postgresql here.
  t.like(kube.getBinding('POSTGRESQL', 'pg'), { user: 'u1' });
});

test('--k8s-secret: one Secret per binding, type servicebinding.io/<type>, the entries as stringData', (t) => {
  const documents = parseAllDocuments(k8sSecrets([pg, redis])).map((document) => document.toJS());
  t.is(documents.length, 2);
  t.like(documents[0], { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'postgresql-binding' }, type: 'servicebinding.io/postgresql' });
  t.deepEqual(documents[0].stringData, bindingEntries(pg));
  t.is(documents[0].stringData['ca.crt'], CA, 'a multi-line PEM survives YAML as it is');
  t.like(documents[1], { kind: 'Secret', metadata: { name: 'redis-binding' }, type: 'servicebinding.io/redis' });
  t.deepEqual(documents[1].stringData, bindingEntries(redis));
  t.is(secretName('My_App Binding.'), 'my-app-binding');
  t.throws(() => secretName('__'), { message: /no Kubernetes Secret name/ });
});

test('env: --json, --service-binding-root and --k8s-secret exclude each other', (t) => {
  t.like(parseCommandLine(['env', 'a', '--service-binding-root', 'dir']).flags, { serviceBindingRoot: 'dir', k8sSecret: false });
  t.true(parseCommandLine(['env', 'a', '--k8s-secret']).flags.k8sSecret);
  const both = t.throws(() => parseCommandLine(['env', 'a', '--json', '--k8s-secret']), { instanceOf: UsageError });
  t.is(both.message, '--json and --k8s-secret cannot be used together');
  t.is(t.throws(() => parseCommandLine(['env', 'a', '--service-binding-root']), { instanceOf: UsageError }).message, '--service-binding-root needs a value');
  t.is(t.throws(() => parseCommandLine(['list', '--k8s-secret']), { instanceOf: UsageError }).message, 'list does not take --k8s-secret');
});
