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
    synopsis: '<offering> <plan> <name> [-c JSON|FILE] [--org GUID] [--space GUID]',
    summary: 'provision an instance and wait until it is ready',
    min: 3,
    max: 3,
    options: ['parameters', 'org', 'space'],
    details: [
      '-c takes the provision parameters as a JSON object, or the name of a file holding one.',
      'Progress goes to stderr; the dashboard address is printed at the end. A name already in use is refused.',
    ].join('\n'),
  },
  {
    name: 'list',
    synopsis: '[--json]',
    summary: 'list the instances with their bindings and last operation',
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
    synopsis: '<name>... [--json]',
    summary: 'print VCAP_SERVICES for the bindings of these instances',
    min: 1,
    max: Infinity,
    options: ['json'],
    details: [
      'Prints `export VCAP_SERVICES=\'…\'` for eval "$(osb-docker env …)", or the JSON itself with --json.',
      'Each instance needs a binding (osb-docker bind <name>); every binding of a named instance is included.',
    ].join('\n'),
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
  all: { type: 'boolean' },
  json: { type: 'boolean' },
  open: { type: 'boolean' },
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
  all: boolean;
  json: boolean;
  open: boolean;
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
    all: values.all ?? false,
    json: values.json ?? false,
    open: values.open ?? false,
  };
  const [name, ...positionals] = all;
  if (name === undefined) return { positionals: [], flags };
  const command = commandNamed(name);
  if (!command) {
    throw new UsageError(
      `unknown command "${name}"; commands: ${COMMANDS.map((spec) => spec.name).join(', ')}`,
      'usage: osb-docker <command> [arguments] [options]; osb-docker --help',
    );
  }
  if (flags.help) return { command, positionals, flags };
  for (const token of tokens) {
    if (token.kind !== 'option' || GLOBAL_OPTIONS.includes(token.name) || command.options.includes(token.name)) continue;
    if (token.name === 'version') continue;
    throw new UsageError(`${command.name} does not take ${token.rawName}`, usageOf(command));
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
  ] as const) {
    if (value !== undefined && value.trim() === '') throw new UsageError(`${option} needs a value`, usageOf(command));
  }
  if (positionals.some((value) => value.trim() === '')) throw new UsageError(`${command.name}: an empty name was given`, usageOf(command));
  if (flags.as !== undefined && flags.all) throw new UsageError('--as and --all cannot be used together', usageOf(command));
  return { command, positionals, flags };
}

function usageFor(argv: string[]): string {
  const command = argv.map(commandNamed).find((spec) => spec !== undefined);
  return command ? usageOf(command) : 'usage: osb-docker <command> [arguments] [options]; osb-docker --help';
}

function describeParseError(error: Error & { code?: string }): string {
  const option = /'(-[^' ]+)/.exec(error.message)?.[1];
  if (error.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return `unknown option ${option ?? error.message}`;
  if (error.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    return /argument missing/.test(error.message) ? `${option ?? 'an option'} needs a value` : `${option ?? 'an option'} takes no value`;
  }
  return error.message;
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
    '',
    'Exit codes: 0 done, 1 failed (the message says why), 2 wrong arguments.',
    'More: osb-docker help <command>.',
  ].join('\n');
}

export function commandHelp(command: CommandSpec): string {
  const options = command.options.map(
    (option) =>
      ({
        parameters: '-c JSON|FILE       provision parameters, e.g. -c \'{"database":"shop"}\'',
        org: '--org GUID         organization_guid sent to the broker (default "local")',
        space: '--space GUID       space_guid sent to the broker (default "local")',
        as: command.name === 'bind' ? '--as NAME          name of the new binding' : '--as NAME          the binding to delete',
        'show-credentials': '--show-credentials print the credentials (secrets!) as JSON',
        all: '--all              delete every binding of the instance',
        json: command.name === 'env' ? '--json             print the JSON alone, not an export line' : '--json             print JSON instead of a table',
        open: '--open             also open it in a browser (xdg-open, open or start)',
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
