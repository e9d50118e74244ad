import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Credentials } from '../osb/types.js';
import { describeBody, expect, PLATFORM, type BrokerClient } from './client.js';
import { bindingPath, unbindOne } from './commands.js';
import { CliError } from './errors.js';
import { findOffering } from './lookup.js';
import { shellWord } from './names.js';
import { resolve, type Io, type Run } from './run.js';
import { followOperation, operationQuery } from './steps.js';

/**
 * An offering's shell, from its catalog entry (service.json offering.metadata.shell): the client's command line and
 * its environment, with {field} standing for a credential of the binding. Secrets go into `env` (the client reads
 * them from there), never into the command line, where `ps` would show them. `unavailable` says why there is none.
 */
export interface ShellSpec {
  about?: string;
  command?: string[];
  env?: Record<string, string>;
  /** Files (mode 600) for clients that read secrets from a file of their own; {files} is the folder they are in. */
  files?: Record<string, string>;
  unavailable?: string;
  /**
   * The same over TLS, verifying the server's certificate against the binding's ca_certificate: used whenever the
   * binding carries one (so also where require_tls closed the plain port). Its command replaces the plain one; its
   * env and files are added.
   */
  tls?: Pick<ShellSpec, 'command' | 'env' | 'files'>;
}

/** The shell to run with these credentials: the TLS one where the binding carries a CA. */
function shellFor(shell: ShellSpec, credentials: Credentials): Pick<ShellSpec, 'command' | 'env' | 'files'> & { tls: boolean } {
  if (!shell.tls || typeof credentials.ca_certificate !== 'string') return { ...shell, tls: false };
  return {
    command: shell.tls.command ?? shell.command,
    env: { ...shell.env, ...shell.tls.env },
    files: { ...shell.files, ...shell.tls.files },
    tls: true,
  };
}

/** The signals that end a session; its binding is removed before the CLI exits. */
const SESSION_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Where the environment file is mounted in the client's container when it runs from the offering's image. */
const MOUNT = '/run/osb-connect';

export async function connect({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  const offering = findOffering(await client.catalog(), instance.service_id);
  const shell = (offering.metadata as { shell?: ShellSpec } | undefined)?.shell;
  if (!shell?.command?.length) throw new CliError(`${offering.name} has no shell to connect to: ${shell?.unavailable ?? 'its catalog entry names none'}`);
  if (instance.state !== 'ready') throw new CliError(`${name} is ${instance.state}, not ready; there is nothing to connect to yet (see \`osb-docker list\`)`);
  const program = shell.command[0]!;
  const local = !flags.image && (await installed(program));
  let image: string | undefined;
  if (!local) {
    const details = await client.request('GET', `/broker/v1/instances/${encodeURIComponent(instance.id)}`);
    expect(details, [200], `reading ${name}`);
    image = (details.body as { image?: string }).image;
    if (!image) throw new CliError(`${program} is not installed here and the broker named no image of ${name} to run it from`);
    if (!(await installed('docker'))) throw new CliError(`${program} is not installed here, nor is docker to run it from ${image}; install one of them`);
  }

  const binding = { id: randomUUID(), name: `${name}-connect-${randomBytes(3).toString('hex')}`, state: 'ready', created_at: '' };
  // From here on an interrupt (Ctrl-C, or a SIGTERM or SIGHUP as when the terminal goes) ends the session, never the
  // cleanup: the binding is removed whatever happens. While the client runs, `run` passes the signal on to it.
  let interrupted = false;
  const onInterrupt = () => {
    interrupted = true;
  };
  for (const signal of SESSION_SIGNALS) process.on(signal, onInterrupt);
  const folder = mkdtempSync(path.join(tmpdir(), 'osb-connect-'));
  let code: number;
  try {
    const credentials = await temporaryBinding(client, io, instance, binding);
    if (interrupted) throw new CliError('interrupted; the temporary binding is removed');
    const chosen = shellFor(shell, credentials);
    io.err(
      `Connected to ${name} with ${shell.about ?? program}${chosen.tls ? ' over verified TLS' : ''} as ${typeof credentials.username === 'string' ? credentials.username : 'a temporary user'}; the binding goes when the session ends.`,
    );
    const values = { ...credentials, files: local ? folder : MOUNT };
    const argv = (chosen.command ?? shell.command).map((part) => fill(part, values));
    const env = Object.fromEntries(Object.entries(chosen.env ?? {}).map(([key, value]) => [key, fill(value, values)]));
    for (const [file, content] of Object.entries(chosen.files ?? {}))
      writeFileSync(path.join(folder, path.basename(file)), fill(content, values), { mode: 0o600 });
    if (interrupted) throw new CliError('interrupted; the temporary binding is removed');
    code = local ? await run(program, argv.slice(1), { ...process.env, ...env }) : await runInImage(image!, argv, env, folder);
  } finally {
    rmSync(folder, { recursive: true, force: true });
    await unbindOne(client, instance, binding, { ...io, out: () => {} }).catch((error: Error) =>
      io.err(
        `osb-docker: the temporary binding ${binding.name} of ${name} is left (${error.message}); remove it with \`osb-docker unbind ${shellWord(name)} --as ${binding.name}\``,
      ),
    );
    for (const signal of SESSION_SIGNALS) process.off(signal, onInterrupt);
  }
  if (code !== 0) throw new CliError(`${program} ended with exit code ${code}`, code > 0 && code < 126 ? code : 1);
}

/** A binding for this session alone; its credentials. */
async function temporaryBinding(
  client: BrokerClient,
  io: Io,
  instance: { id: string; service_id: string; plan_id: string; name?: string },
  binding: { id: string; name: string },
): Promise<Credentials> {
  const bindPath = bindingPath(instance.id, binding.id);
  const reply = await client.request('PUT', `${bindPath}?accepts_incomplete=true`, {
    service_id: instance.service_id,
    plan_id: instance.plan_id,
    context: { platform: PLATFORM, binding_name: binding.name },
  });
  if (![200, 201, 202].includes(reply.status)) throw new CliError(`the broker refused a binding for the session: ${describeBody(reply.body)}`);
  if (reply.status !== 202) return reply.body.credentials ?? {};
  const done = await followOperation(client, io, `${bindPath}/last_operation${operationQuery(reply.body)}`);
  if (done.state !== 'succeeded') throw new CliError(`the binding for the session failed: ${done.description ?? 'it disappeared'}`);
  const fetched = await client.request('GET', bindPath);
  expect(fetched, [200], 'fetching the binding for the session');
  return fetched.body.credentials ?? {};
}

/** "{host}" and friends from the credentials; an unknown field is an error in the catalog entry. */
function fill(template: string, credentials: Credentials | Record<string, unknown>): string {
  return template.replace(/\{([A-Za-z0-9_]+)\}/g, (_, field: string) => {
    const value = (credentials as Record<string, unknown>)[field];
    if (typeof value !== 'string' && typeof value !== 'number')
      throw new CliError(`the shell of this offering needs the credential field ${field}, which the binding has not`);
    return String(value);
  });
}

/**
 * The client from the offering's image, on the host's network so the published port answers as it does here. The
 * secrets reach it as a file (mode 600, read by the caller's uid inside) sourced before the client starts, so they
 * never appear in the container's configuration, which `docker inspect` shows.
 */
function runInImage(image: string, argv: string[], env: Record<string, string>, folder: string): Promise<number> {
  const file = path.join(folder, 'env');
  writeFileSync(
    file,
    Object.entries(env)
      .map(([key, value]) => `export ${key}='${value.replaceAll("'", `'\\''`)}'\n`)
      .join(''),
    { mode: 0o600 },
  );
  chmodSync(folder, 0o700);
  const user = typeof process.getuid === 'function' ? [`--user=${process.getuid()}:${process.getgid!()}`] : [];
  return run(
    'docker',
    [
      'run',
      '--rm',
      '--interactive',
      ...(process.stdin.isTTY ? ['--tty'] : []),
      '--network=host',
      ...user,
      '--env=HOME=/tmp',
      `--volume=${folder}:${MOUNT}:ro`,
      '--entrypoint=sh',
      image,
      '-c',
      `. ${MOUNT}/env && exec "$@"`,
      'sh',
      ...argv,
    ],
    process.env,
  );
}

/**
 * Runs the client on this terminal. Ctrl-C belongs to the client (psql cancels a query with it), so this process
 * ignores SIGINT while it runs; a SIGTERM or SIGHUP is passed on, and the binding still goes afterwards.
 */
function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: 'inherit', env });
    // On a terminal Ctrl-C reaches the client itself; a SIGINT sent to this process alone is passed on.
    const ignore = () => (process.stdin.isTTY ? undefined : child.kill('SIGINT'));
    const forward = (signal: NodeJS.Signals) => child.kill(signal);
    process.on('SIGINT', ignore);
    process.on('SIGTERM', forward);
    process.on('SIGHUP', forward);
    const done = () => {
      process.off('SIGINT', ignore);
      process.off('SIGTERM', forward);
      process.off('SIGHUP', forward);
    };
    child.once('error', (error) => {
      done();
      reject(new CliError(`could not start ${command}: ${error.message}`));
    });
    child.once('exit', (code, signal) => {
      done();
      resolvePromise(code ?? (signal ? 128 + (signalNumber[signal] ?? 1) : 1));
    });
  });
}

const signalNumber: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Whether a program is on the PATH. */
function installed(program: string): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const child = spawn('sh', ['-c', 'command -v "$1"', 'sh', program], { stdio: 'ignore' });
    child.once('error', () => resolvePromise(false));
    child.once('exit', (code) => resolvePromise(code === 0));
  });
}
