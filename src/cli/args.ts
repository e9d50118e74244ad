import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { UsageError } from './errors.js';

export interface CommandSpec {
  name: string;
  /** The arguments part of the usage line. */
  synopsis: string;
  summary: string;
  min: number;
  max: number;
  /** Options of this command besides the global ones. */
  options: string[];
  details?: string;
}

const GLOBAL_OPTIONS = ['url', 'user', 'password', 'help'];

export const COMMANDS: CommandSpec[] = [
  {
    name: 'catalog',
    synopsis: '[--json]',
    summary: 'list the offerings and their plans',
    min: 0,
    max: 0,
    options: ['json'],
  },
  {
    name: 'create',
    // --from-backup is in the details: the usage line stays as scripts and tests know it.
    synopsis: '<offering> <plan> <name> [-c JSON|FILE] [--org GUID] [--space GUID]',
    summary: 'provision an instance (--from-backup <name>[:<id>]: from a backup) and wait until it is ready',
    min: 3,
    max: 3,
    options: ['parameters', 'org', 'space', 'from-backup'],
    details: [
      '-c takes the provision parameters as a JSON object, or the name of a file holding one.',
      'Progress goes to stderr; the dashboard address is printed at the end. A name already in use is refused.',
      '--from-backup starts the new instance from a backup (the provision parameter restore_from): of the instance',
      'named, its latest succeeded backup, or the one after the colon. The source must be of the same offering,',
      'organization and space. A deleted instance has no name any more: give its id.',
    ].join('\n'),
  },
  {
    name: 'list',
    synopsis: '[--json]',
    summary: 'list the instances: state as the engine sees it, endpoint, bindings and last operation',
    min: 0,
    max: 0,
    options: ['json'],
  },
  {
    name: 'bind',
    synopsis: '<name> [--as <binding-name>] [--show-credentials]',
    summary: 'create a binding (credentials) for an instance',
    min: 1,
    max: 1,
    options: ['as', 'show-credentials'],
    details: [
      'The binding is named <name>-binding (then <name>-binding-2, …) unless --as names it.',
      'Credentials are printed only with --show-credentials; `osb-docker env <name>` hands them to an app.',
    ].join('\n'),
  },
  {
    name: 'unbind',
    synopsis: '<name> [--as <binding-name> | --all]',
    summary: 'delete a binding of an instance',
    min: 1,
    max: 1,
    options: ['as', 'all'],
    details: "Without --as, the instance's only binding is deleted; when it has several, name one with --as or pass --all.",
  },
  {
    name: 'rotate',
    synopsis: '<name> [--as <binding>] [--unbind-predecessor] [--show-credentials]',
    summary: 'replace a binding with a new one that has its own credentials (OSB 2.17 binding rotation)',
    min: 1,
    max: 1,
    options: ['as', 'unbind-predecessor', 'show-credentials'],
    details: [
      "Without --as, the instance's only ready binding is rotated. The new binding keeps its name, app and parameters;",
      'the old credentials keep working until the old binding is unbound: --unbind-predecessor does that once the',
      'new one is ready, or later `osb-docker unbind <name> --as <old binding id>`.',
    ].join('\n'),
  },
  {
    name: 'delete',
    synopsis: '<name>',
    summary: 'unbind every binding, then deprovision the instance and wait',
    min: 1,
    max: 1,
    options: [],
  },
  {
    name: 'dashboard',
    synopsis: '<name> [--open]',
    summary: "print (or open) the instance's dashboard address",
    min: 1,
    max: 1,
    options: ['open'],
  },
  {
    name: 'env',
    // --service-binding-root and --k8s-secret are in the details: the usage line stays as scripts and tests know it.
    synopsis: '<name>... [--json]',
    summary: 'print VCAP_SERVICES for the bindings of these instances (or write them as servicebinding.io)',
    min: 1,
    max: Infinity,
    options: ['json', 'service-binding-root', 'k8s-secret'],
    details: [
      'Prints `export VCAP_SERVICES=\'…\'` for eval "$(osb-docker env …)", or the JSON itself with --json.',
      'Each instance needs a binding (osb-docker bind <name>); every binding of a named instance is included.',
      'Each entry is named after its binding (the default <name>-binding keeps the instance name), as on Cloud Foundry.',
      '--service-binding-root DIR writes the Service Binding for Kubernetes projection instead: DIR/<binding name>/',
      'with one file per entry (type, provider, host, port, username, password, uri, …), and prints',
      "`export SERVICE_BINDING_ROOT='DIR'`. --k8s-secret prints the same entries as Kubernetes Secrets",
      '(type servicebinding.io/<type>) for kubectl apply -f -.',
    ].join('\n'),
  },
  {
    name: 'clone',
    synopsis: '<name> <new-name> [--org GUID] [--space GUID]',
    summary: 'create a new instance of the same offering and plan from a fresh backup of a running one',
    min: 2,
    max: 2,
    options: ['org', 'space'],
    details: 'The provision parameter clone_of: the broker backs <name> up and restores that into <new-name>.',
  },
  {
    name: 'backup',
    synopsis: '<name>',
    summary: 'back an instance up now and wait until the backup ends',
    min: 1,
    max: 1,
    options: [],
    details: 'Prints the backup id, its size (stored, compressed and encrypted; and of the dump) and how long it took.',
  },
  {
    name: 'backups',
    synopsis: '<name> [--json]',
    summary: "list an instance's backups and its backup schedule",
    min: 1,
    max: 1,
    options: ['json'],
    details: 'Backups outlive their instance: for a deleted instance give its id.',
  },
  {
    name: 'restore',
    synopsis: '<name> [--backup <id>|latest]',
    summary: 'restore a backup into the running instance, in place, and wait',
    min: 1,
    max: 1,
    options: ['backup'],
    details: [
      'Without --backup, the latest succeeded backup. The instance is locked while it runs; what it held is',
      'replaced by the backup (bindings stay). A restore that fails leaves the instance as it was.',
    ].join('\n'),
  },
  {
    name: 'export',
    synopsis: '<name> [<file>|-] [--backup <id>]',
    summary: 'download the dump of a backup (the latest succeeded one unless --backup names one)',
    min: 1,
    max: 2,
    options: ['backup'],
    details: [
      'The file is <name>-<backup id>.dump unless named; - writes the dump to stdout. An existing file is not',
      "overwritten. The dump is the plain one the offering's backup script wrote (e.g. pg_restore reads PostgreSQL's).",
      'Progress (bytes, MB/s) goes to stderr, except when stdout is the dump.',
    ].join('\n'),
  },
  {
    name: 'import',
    synopsis: '<name> [<file>|-]',
    summary: 'upload a dump as a new backup of the instance, then restore it in place',
    min: 1,
    max: 2,
    options: [],
    details: [
      'Reads the file (stdin without one, or with -) as a stream: a dump as `osb-docker export` writes it.',
      'The upload becomes a backup of the instance (origin "import"); the restore that follows checks the dump',
      'before anything changes, so a wrong file leaves the instance as it was.',
    ].join('\n'),
  },
  {
    name: 'info',
    synopsis: '<name> [--json]',
    summary: 'show an instance as the engine runs it: state, endpoint, plan limits, bindings, last backup',
    min: 1,
    max: 1,
    options: ['json'],
    details: "The state is the container's own (running, or exited with its exit code; its health check), not only the record's.",
  },
  {
    name: 'update',
    synopsis: '<name> [--plan <plan>] [-c JSON|FILE]',
    summary: 'change the plan or the parameters of an instance and wait',
    min: 1,
    max: 1,
    options: ['plan', 'parameters'],
    details: 'An OSB update (PATCH). A new plan gets its limits (memory, CPU, processes) on the running container.',
  },
  {
    name: 'logs',
    synopsis: '<name> [-f] [--tail N]',
    summary: "print the instance's log (the last 100 lines), with its secrets masked",
    min: 1,
    max: 1,
    options: ['follow', 'tail'],
    details: 'Through the broker (GET /broker/v1/instances/:id/logs): passwords of the instance and its bindings read ••••••.',
  },
  {
    name: 'connect',
    synopsis: '<name> [--image]',
    summary: "open the engine's own shell (psql, mariadb, redis-cli, mosquitto_sub) with a temporary binding",
    min: 1,
    max: 1,
    options: ['image'],
    details: [
      "The client comes from this machine when it is installed, else from the offering's image (docker run --rm",
      '--network host; --image always does that). The binding is made for the session and removed when it ends,',
      "also on Ctrl-C or when the client fails. Standard input may be a pipe: echo 'select 1' | osb-docker connect db.",
    ].join('\n'),
  },
  {
    name: 'restart',
    synopsis: '<name>',
    summary: "restart the instance's service and wait until it accepts logins again",
    min: 1,
    max: 1,
    options: [],
  },
  { name: 'help', synopsis: '[<command>]', summary: "show this help, or a command's", min: 0, max: 1, options: [] },
];

const OPTION_HELP: Record<string, string> = {
  url: '--url URL          the broker (env OSB_BROKER_URL, default http://127.0.0.1:8080)',
  user: '--user NAME        basic-auth user (env OSB_BROKER_USERNAME, default broker)',
  password: '--password PASS    basic-auth password (env OSB_BROKER_PASSWORD, see below)',
  help: '-h, --help         show help',
};

const PARSE_OPTIONS = {
  url: { type: 'string' },
  user: { type: 'string' },
  password: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
  parameters: { type: 'string', short: 'c' },
  org: { type: 'string' },
  space: { type: 'string' },
  as: { type: 'string' },
  'show-credentials': { type: 'boolean' },
  'unbind-predecessor': { type: 'boolean' },
  all: { type: 'boolean' },
  json: { type: 'boolean' },
  open: { type: 'boolean' },
  backup: { type: 'string' },
  'from-backup': { type: 'string' },
  'service-binding-root': { type: 'string' },
  'k8s-secret': { type: 'boolean' },
  plan: { type: 'string' },
  follow: { type: 'boolean', short: 'f' },
  tail: { type: 'string' },
  image: { type: 'boolean' },
} as const;

export interface Flags {
  url?: string;
  user?: string;
  password?: string;
  help: boolean;
  version: boolean;
  parameters?: string;
  org?: string;
  space?: string;
  as?: string;
  showCredentials: boolean;
  unbindPredecessor: boolean;
  all: boolean;
  json: boolean;
  open: boolean;
  backup?: string;
  fromBackup?: string;
  serviceBindingRoot?: string;
  k8sSecret: boolean;
  plan?: string;
  follow: boolean;
  tail?: string;
  image: boolean;
}

export interface CommandLine {
  command?: CommandSpec;
  positionals: string[];
  flags: Flags;
}

export const commandNamed = (name: string) => COMMANDS.find((command) => command.name === name);

export const usageOf = (command: CommandSpec) => `usage: osb-docker ${command.name}${command.synopsis ? ` ${command.synopsis}` : ''}`;

/** Parses the whole command line; options may come before or after the command. Throws UsageError. */
export function parseCommandLine(argv: string[]): CommandLine {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: PARSE_OPTIONS, allowPositionals: true, strict: true, tokens: true });
  } catch (error) {
    throw new UsageError(describeParseError(error as Error & { code?: string }), usageFor(argv));
  }
  const { values, positionals: all, tokens } = parsed;
  const flags: Flags = {
    url: values.url,
    user: values.user,
    password: values.password,
    help: values.help ?? false,
    version: values.version ?? false,
    parameters: values.parameters,
    org: values.org,
    space: values.space,
    as: values.as,
    showCredentials: values['show-credentials'] ?? false,
    unbindPredecessor: values['unbind-predecessor'] ?? false,
    all: values.all ?? false,
    json: values.json ?? false,
    open: values.open ?? false,
    backup: values.backup,
    fromBackup: values['from-backup'],
    serviceBindingRoot: values['service-binding-root'],
    k8sSecret: values['k8s-secret'] ?? false,
    plan: values.plan,
    follow: values.follow ?? false,
    tail: values.tail,
    image: values.image ?? false,
  };
  const [name, ...positionals] = all;
  if (name === undefined) return { positionals: [], flags };
  const command = commandNamed(name);
  if (!command) {
    const guess = closest(
      name,
      COMMANDS.map((spec) => spec.name),
    );
    throw new UsageError(
      `unknown command "${name}"${guess ? ` (did you mean "${guess}"?)` : ''}; commands: ${COMMANDS.map((spec) => spec.name).join(', ')}`,
      'usage: osb-docker <command> [arguments] [options]; osb-docker --help',
    );
  }
  if (flags.help) return { command, positionals, flags };
  for (const token of tokens) {
    if (token.kind !== 'option' || GLOBAL_OPTIONS.includes(token.name) || command.options.includes(token.name)) continue;
    if (token.name === 'version') continue;
    const guess = closest(token.name, command.options);
    throw new UsageError(`${command.name} does not take ${token.rawName}${guess ? ` (did you mean --${guess}?)` : ''}`, usageOf(command));
  }
  if (positionals.length < command.min) {
    const names = command.synopsis.match(/<[^>]+>/g) ?? [];
    const missing = names.slice(positionals.length, command.min).join(' ');
    throw new UsageError(`${command.name}: missing ${missing}`, usageOf(command));
  }
  if (positionals.length > command.max) {
    throw new UsageError(
      `${command.name}: too many arguments (${positionals
        .slice(command.max)
        .map((value) => JSON.stringify(value))
        .join(' ')})`,
      usageOf(command),
    );
  }
  for (const [option, value] of [
    ['--as', flags.as],
    ['--org', flags.org],
    ['--space', flags.space],
    ['--url', flags.url],
    ['--backup', flags.backup],
    ['--from-backup', flags.fromBackup],
    ['--service-binding-root', flags.serviceBindingRoot],
    ['--plan', flags.plan],
    ['--tail', flags.tail],
  ] as const) {
    if (value !== undefined && value.trim() === '') throw new UsageError(`${option} needs a value`, usageOf(command));
  }
  if (positionals.some((value) => value.trim() === '')) throw new UsageError(`${command.name}: an empty name was given`, usageOf(command));
  if (flags.as !== undefined && flags.all) throw new UsageError('--as and --all cannot be used together', usageOf(command));
  const outputs = [flags.json && '--json', flags.serviceBindingRoot !== undefined && '--service-binding-root', flags.k8sSecret && '--k8s-secret'];
  const chosen = outputs.filter((option): option is string => typeof option === 'string');
  if (chosen.length > 1) throw new UsageError(`${chosen.join(' and ')} cannot be used together`, usageOf(command));
  return { command, positionals, flags };
}

function usageFor(argv: string[]): string {
  const command = argv.map(commandNamed).find((spec) => spec !== undefined);
  return command ? usageOf(command) : 'usage: osb-docker <command> [arguments] [options]; osb-docker --help';
}

function describeParseError(error: Error & { code?: string }): string {
  const option = /'(-[^' ]+)/.exec(error.message)?.[1];
  if (error.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const guess = option?.startsWith('--') ? closest(option.slice(2), Object.keys(PARSE_OPTIONS)) : undefined;
    return `unknown option ${option ?? error.message}${guess ? ` (did you mean --${guess}?)` : ''}`;
  }
  if (error.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    return /argument missing/.test(error.message) ? `${option ?? 'an option'} needs a value` : `${option ?? 'an option'} takes no value`;
  }
  return error.message;
}

/** The candidate a mistyped word was most likely meant to be (at most a third of its letters off), if any. */
export function closest(word: string, candidates: string[]): string | undefined {
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const distance = editDistance(word.toLowerCase(), candidate);
    if (distance <= Math.max(1, Math.floor(candidate.length / 3)) && (!best || distance < best.distance)) best = { candidate, distance };
  }
  return best?.candidate;
}

/** Edit distance where swapping two neighbouring letters ("shpo" for "shop") counts as one edit, as other typos do. */
function editDistance(a: string, b: string): number {
  let before: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j]!, before[j - 2]! + 1);
    }
    before = previous;
    previous = row;
  }
  return previous[b.length]!;
}

/** -c: a JSON object, or the name of a file holding one (as `cf create-service -c` takes them). */
export function parseParameters(value: string | undefined, usage: string): Record<string, unknown> | undefined {
  if (value === undefined) return undefined;
  let text = value;
  const inline = /^\s*[{[]/.test(value);
  if (!inline) {
    if (!existsSync(value)) throw new UsageError(`-c must be a JSON object or the name of a file holding one; "${value}" is neither`, usage);
    text = readFileSync(value, 'utf8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`-c ${inline ? 'is not valid JSON' : `file ${value} is not valid JSON`}: ${(error as Error).message}`, usage);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError('-c must be a JSON object', usage);
  return parsed as Record<string, unknown>;
}

export function helpText(): string {
  const width = Math.max(...COMMANDS.map((command) => command.name.length));
  return [
    'osb-docker: run services from an Open Service Broker on your laptop, the way a platform would',
    '',
    'usage: osb-docker <command> [arguments] [options]',
    '',
    'Commands:',
    ...COMMANDS.map((command) => `  ${command.name.padEnd(width)}  ${command.synopsis}\n  ${''.padEnd(width)}    ${command.summary}`),
    '',
    'Options for every command:',
    ...GLOBAL_OPTIONS.map((option) => `  ${OPTION_HELP[option]}`),
    '',
    'Environment:',
    '  OSB_BROKER_URL       the broker, default http://127.0.0.1:8080',
    '  OSB_BROKER_USERNAME  basic-auth user, default broker',
    '  OSB_BROKER_PASSWORD  basic-auth password. When unset, the password a locally started broker generated is',
    '                       read from $BROKER_STATE_DIR/secrets.json, or ./.broker-state/secrets.json (where',
    "                       `npm start` keeps it), so in the broker's checkout nothing needs to be set.",
    '',
    'Example:',
    '  osb-docker create postgresql small orders-db && osb-docker bind orders-db',
    '  eval "$(osb-docker env orders-db)" && node app.js',
    '  osb-docker backup orders-db && osb-docker export orders-db   # the dump as orders-db-<backup id>.dump',
    '',
    'Exit codes: 0 done, 1 failed (the message says why), 2 wrong arguments.',
    'More: osb-docker help <command>.',
  ].join('\n');
}

export function commandHelp(command: CommandSpec): string {
  const options = command.options.map(
    (option) =>
      ({
        parameters:
          command.name === 'update'
            ? '-c JSON|FILE       parameters to change, e.g. -c \'{"require_tls":true}\''
            : '-c JSON|FILE       provision parameters, e.g. -c \'{"database":"shop"}\'',
        org: '--org GUID         organization_guid sent to the broker (default "local")',
        space: '--space GUID       space_guid sent to the broker (default "local")',
        as:
          command.name === 'bind'
            ? '--as NAME          name of the new binding'
            : command.name === 'rotate'
              ? '--as NAME|ID       the binding to rotate'
              : '--as NAME          the binding to delete',
        'unbind-predecessor': '--unbind-predecessor  unbind the old binding once the new one is ready',
        'show-credentials': '--show-credentials print the credentials (secrets!) as JSON',
        all: '--all              delete every binding of the instance',
        json: command.name === 'env' ? '--json             print the JSON alone, not an export line' : '--json             print JSON instead of a table',
        open: '--open             also open it in a browser (xdg-open, open or start)',
        backup:
          command.name === 'restore'
            ? '--backup ID|latest  the backup to restore (default latest)'
            : '--backup ID        the backup to export (default the latest)',
        'from-backup': '--from-backup NAME[:ID]  start from a backup of NAME (default its latest)',
        'service-binding-root': '--service-binding-root DIR  write DIR/<binding name>/<entry> files (folders 0700, files 0600)',
        'k8s-secret': '--k8s-secret       print Kubernetes Secret manifests (YAML) of the same entries',
        plan: '--plan PLAN        the plan to move to',
        follow: '-f, --follow       keep printing new lines until the container stops (Ctrl-C ends it)',
        tail: '--tail N           how many of the last lines (default 100; 0: none, with -f only new ones)',
        image: "--image            run the client from the offering's image even when it is installed here",
      })[option],
  );
  return [
    usageOf(command),
    '',
    `${command.summary[0]!.toUpperCase()}${command.summary.slice(1)}.`,
    ...(command.details ? ['', command.details] : []),
    ...(options.length ? ['', 'Options:', ...options.map((line) => `  ${line}`)] : []),
    '',
    'Broker options (every command):',
    ...GLOBAL_OPTIONS.filter((option) => option !== 'help').map((option) => `  ${OPTION_HELP[option]}`),
    '  When no password is given, it is read from $BROKER_STATE_DIR/secrets.json or ./.broker-state/secrets.json.',
  ].join('\n');
}
