import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/config.js';
import type { TestBroker } from './env.js';

/** The built osb-docker, as `npx osb-docker` runs it. */
export const CLI = path.join(PACKAGE_ROOT, 'dist/src/cli/osb-docker.js');

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment a user would have: nothing of ours (broker address, state folder, binding root) from this process. */
export function userEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('OSB_BROKER_') && name !== 'BROKER_STATE_DIR' && name !== 'SERVICE_BINDING_ROOT'),
  );
}

/** A user's environment pointed at the test broker with its credentials. */
export function brokerEnv(broker: TestBroker, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...userEnv(),
    OSB_BROKER_URL: broker.broker.url,
    OSB_BROKER_USERNAME: broker.config.username,
    OSB_BROKER_PASSWORD: broker.config.password,
    ...extra,
  };
}

export interface RunOptions {
  env: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to the child's standard input, which is then closed (unless `started` takes the child over). */
  stdin?: string;
  /** Called once the child runs, with what it has printed so far; the caller then owns its standard input. */
  started?: (child: ChildProcess, output: () => string) => void;
}

/** Runs a command to its end and collects what it printed. */
export function runCommand(command: string, args: string[], options: RunOptions): Promise<Run> {
  const child = spawn(command, args, { cwd: options.cwd ?? PACKAGE_ROOT, env: options.env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  if (options.started) options.started(child, () => stdout);
  else child.stdin.end(options.stdin ?? '');
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
