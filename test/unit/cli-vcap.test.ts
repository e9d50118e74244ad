import test from 'ava';
import { execFileSync } from 'node:child_process';
import { parseCommandLine } from '../../src/cli/args.js';
import { UsageError } from '../../src/cli/errors.js';
import { formatTable } from '../../src/cli/table.js';
import { buildVcapServices, exportLine, serviceNames, shellQuote, type BoundService } from '../../src/cli/vcap.js';

const pg = (binding: string, bindingName?: string): BoundService => ({
  offering: { name: 'postgresql', tags: ['postgresql', 'relational'] },
  plan: 'small',
  instance: { id: 'i-pg', name: 'orders-db' },
  binding: { id: binding, ...(bindingName ? { name: bindingName } : {}), credentials: { uri: `postgres://${binding}`, port: 40000 } },
});

test('VCAP_SERVICES is keyed by offering, one entry per binding, with the fields Cloud Foundry sets', (t) => {
  const drain: BoundService = {
    offering: { name: 'syslog-drain', tags: ['syslog'] },
    plan: 'medium',
    instance: { id: 'i-log', name: 'logs' },
    binding: { id: 'b-log', name: 'logs-binding', credentials: {}, syslog_drain_url: 'syslog://127.0.0.1:40002' },
  };
  const redis: BoundService = {
    offering: { name: 'redis' },
    plan: 'small',
    instance: { id: 'i-redis', name: 'cache' },
    binding: { id: 'b-redis', name: 'cache-binding', credentials: { uri: 'redis://u:p@127.0.0.1:40001' } },
  };
  const services = buildVcapServices([pg('b-1', 'orders-db-binding'), redis, pg('b-2'), drain]);

  t.deepEqual(Object.keys(services), ['postgresql', 'redis', 'syslog-drain']);
  t.deepEqual(services.postgresql, [
    {
      binding_guid: 'b-1',
      binding_name: 'orders-db-binding',
      credentials: { uri: 'postgres://b-1', port: 40000 },
      instance_guid: 'i-pg',
      instance_name: 'orders-db',
      label: 'postgresql',
      // Two bindings of one instance: each gets a name of its own (see the naming test below).
      name: 'orders-db-binding',
      plan: 'small',
      provider: null,
      tags: ['postgresql', 'relational'],
      volume_mounts: [],
    },
    {
      binding_guid: 'b-2',
      binding_name: null,
      credentials: { uri: 'postgres://b-2', port: 40000 },
      instance_guid: 'i-pg',
      instance_name: 'orders-db',
      label: 'postgresql',
      name: 'b-2',
      plan: 'small',
      provider: null,
      tags: ['postgresql', 'relational'],
      volume_mounts: [],
    },
  ]);
  // An offering without tags gets an empty list; syslog_drain_url appears only where the binding has one.
  t.deepEqual(services.redis![0]!.tags, []);
  t.false('syslog_drain_url' in services.redis![0]!);
  t.is(services['syslog-drain']![0]!.syslog_drain_url, 'syslog://127.0.0.1:40002');
  t.is(services['syslog-drain']![0]!.plan, 'medium');
  // The JSON keeps CF's (alphabetical) field order.
  t.deepEqual(Object.keys(services['syslog-drain']![0]!), [
    'binding_guid',
    'binding_name',
    'credentials',
    'instance_guid',
    'instance_name',
    'label',
    'name',
    'plan',
    'provider',
    'syslog_drain_url',
    'tags',
    'volume_mounts',
  ]);
  // The catalog's tag list is copied, not shared.
  const offering = { name: 'x', tags: ['a'] };
  const built = buildVcapServices([{ ...redis, offering }]);
  built.x![0]!.tags.push('b');
  t.deepEqual(offering.tags, ['a']);
  t.deepEqual(buildVcapServices([]), {});
});

test('service names: the binding name as Cloud Foundry gives it, the instance name for the default binding, never twice', (t) => {
  const cache = (binding: string, bindingName?: string, instance = 'cache'): BoundService => ({
    offering: { name: 'redis' },
    plan: 'small',
    instance: { id: `i-${instance}`, name: instance },
    binding: { id: binding, ...(bindingName ? { name: bindingName } : {}), credentials: {} },
  });
  // One default-named binding: the instance name, which apps look services up by.
  t.deepEqual(serviceNames([cache('b-1', 'cache-binding')]), ['cache']);
  // A binding named with --as: that name, as Cloud Foundry does.
  t.deepEqual(serviceNames([cache('b-1', 'sessions')]), ['sessions']);
  // Two bindings of one instance, as osb-docker bind names them: the first keeps the instance name.
  t.deepEqual(serviceNames([cache('b-1', 'cache-binding'), cache('b-2', 'cache-binding-2')]), ['cache', 'cache-binding-2']);
  // Unnamed bindings (another platform's) that would share the instance name: their ids.
  t.deepEqual(serviceNames([cache('b-1'), cache('b-2')]), ['b-1', 'b-2']);
  // A binding named like another instance's default: both fall back to their binding names.
  t.deepEqual(serviceNames([cache('b-1', 'cache-binding'), cache('b-2', 'cache', 'other')]), ['cache-binding', 'cache']);
  // cfenv keeps one service per name: every name in VCAP_SERVICES differs.
  const many = [cache('b-1', 'cache-binding'), cache('b-2', 'cache-binding-2'), cache('b-3'), pg('b-4', 'orders-db-binding')];
  const names = Object.values(buildVcapServices(many)).flatMap((entries) => entries.map((entry) => entry.name));
  t.is(new Set(names).size, many.length);
});

const awkward = [
  '',
  'plain',
  "it's",
  "''",
  "'\\''",
  'a b\tc',
  '$HOME `id` $(id) "quoted" \\ backslash; & | < > * ? ~ # !',
  'line one\nline two\n',
  'ünïcödé ✓',
  JSON.stringify({ uri: "postgres://o'brien:p'ss@host/db", note: "it's $5" }),
];

test('shellQuote survives a POSIX shell unchanged, whatever the value holds', (t) => {
  for (const value of awkward) {
    const quoted = shellQuote(value);
    t.true(quoted.startsWith("'") && quoted.endsWith("'"));
    const echoed = execFileSync('sh', ['-c', `printf '%s' ${quoted}`], { encoding: 'utf8' });
    t.is(echoed, value, quoted);
  }
  t.is(shellQuote("it's"), `'it'\\''s'`);
});

test('exportLine, evaluated by sh, sets the variable to exactly the value', (t) => {
  const value = JSON.stringify(
    buildVcapServices([{ ...pg('b-1', "o'brien's binding"), binding: { ...pg('b-1').binding, credentials: { password: 'p\'$`x`\n"q"' } } }]),
  );
  const line = exportLine('VCAP_SERVICES', value);
  t.true(line.startsWith("export VCAP_SERVICES='"));
  t.false(line.includes('\n'), 'JSON escapes newlines, so the export is one line');
  const seen = execFileSync('sh', ['-c', `eval "$1"; printf '%s' "$VCAP_SERVICES"`, 'sh', line], { encoding: 'utf8', env: {} });
  t.is(seen, value);
  t.deepEqual(JSON.parse(seen), JSON.parse(value));
  const child = execFileSync('sh', ['-c', `eval "$1"; node -e 'process.stdout.write(process.env.VCAP_SERVICES)'`, 'sh', line], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH },
  });
  t.is(child, value, 'exported to child processes');
  t.throws(() => exportLine('NOT-A-NAME', 'x'));
});

test('table: padded columns, last column unpadded, long cells cut', (t) => {
  const text = formatTable(
    ['NAME', 'DESCRIPTION', 'TAGS'],
    [
      ['a', 'short', 'x, y'],
      ['longer-name', 'a'.repeat(20), ''],
    ],
    { maxWidth: { DESCRIPTION: 10 } },
  );
  t.is(text, ['NAME         DESCRIPTION  TAGS', 'a            short        x, y', `longer-name  ${'a'.repeat(9)}…`].join('\n'));
});

test("command line: usage errors carry the command's usage line and exit code 2", (t) => {
  const missing = t.throws(() => parseCommandLine(['create', 'postgresql']), { instanceOf: UsageError });
  t.is(missing.message, 'create: missing <plan> <name>');
  t.is(missing.usage, 'usage: osb-docker create <offering> <plan> <name> [-c JSON|FILE] [--org GUID] [--space GUID]');
  t.is(missing.exitCode, 2);
  t.is(t.throws(() => parseCommandLine(['list', '--as', 'x']), { instanceOf: UsageError }).message, 'list does not take --as');
  t.is(t.throws(() => parseCommandLine(['bind', 'a', '--as']), { instanceOf: UsageError }).message, '--as needs a value');
  t.is(t.throws(() => parseCommandLine(['list', '--nope']), { instanceOf: UsageError }).message, 'unknown option --nope');
  t.regex(
    t.throws(() => parseCommandLine(['frobnicate']), { instanceOf: UsageError }).message,
    /^unknown command "frobnicate"; commands: catalog, create, list/,
  );
  t.is(t.throws(() => parseCommandLine(['unbind', 'a', '--as', 'b', '--all']), { instanceOf: UsageError }).message, '--as and --all cannot be used together');

  const parsed = parseCommandLine(['--url', 'http://b:1', 'create', 'postgresql', 'small', 'db', '-c', '{"database":"x"}', '--space', 's']);
  t.is(parsed.command?.name, 'create');
  t.deepEqual(parsed.positionals, ['postgresql', 'small', 'db']);
  t.like(parsed.flags, { url: 'http://b:1', parameters: '{"database":"x"}', space: 's', json: false });
  t.deepEqual(parseCommandLine(['env', 'a', 'b', '--json']).positionals, ['a', 'b']);
});
