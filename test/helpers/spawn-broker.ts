import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { PACKAGE_ROOT } from '../../src/config.js';
import { waitFor } from '../../src/wait.js';
import { OsbClient } from './osb-client.js';

/** The broker as a real process: `node dist/src/main.js`, as an operator runs it. */
export interface SpawnedBroker {
  url: string;
  client: OsbClient;
  /** stdout lines so far (the JSON log). */
  stdout: string[];
  /** stderr lines so far. */
  stderr: string[];
  /** The password printed on stderr when the broker generated one, if it did. */
  generatedPassword?: string;
  /** stdout lines that parse as JSON (pino log records). */
  logs(): Array<Record<string, any>>;
  /** Resolves with the first log record `match` accepts, waiting for it up to `timeoutMs`. */
  waitForLog(match: (record: Record<string, any>) => boolean, timeoutMs?: number): Promise<Record<string, any>>;
  /** Sends `signal` and resolves once the process has exited. */
  kill(signal?: NodeJS.Signals): Promise<Exit>;
  exited: Promise<Exit>;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Variables of the test's own environment that would change what the child broker does. */
const INHERITED_BROKER_VARS = /^(PORT|REDIS_URL|LOG_LEVEL|BROKER_.*)$/;

const live = new Set<ChildProcess>();

/** A free TCP port on loopback, for PORT. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export const hexKey = () => randomBytes(32).toString('hex');

export function tempStateDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'osb-broker-state-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts `node dist/src/main.js` with exactly `env` (plus PATH, HOME, DOCKER_HOST... of this process) and waits
 * until /healthz answers. PORT must be set. Rejects with the broker's stderr if it exits before that.
 */
export async function spawnBroker(env: Record<string, string | undefined>, timeoutMs = 60_000): Promise<SpawnedBroker> {
  const childEnv: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !INHERITED_BROKER_VARS.test(name)) childEnv[name] = value;
  }
  for (const [name, value] of Object.entries(env)) if (value !== undefined) childEnv[name] = value;
  if (!childEnv.PORT) throw new Error('spawnBroker needs PORT');
  const url = `http://127.0.0.1:${childEnv.PORT}`;

  const child = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'dist/src/main.js')], {
    env: childEnv,
    cwd: PACKAGE_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  const stdout = collectLines(child.stdout);
  const stderr = collectLines(child.stderr);
  let ended: Exit | undefined;
  void exited.then((exit) => (ended = exit));

  await waitFor(
    async () => {
      if (ended) throw new Error(`the broker exited (${JSON.stringify(ended)}) before answering /healthz:\n${stderr.join('\n')}`);
      const healthy = await fetch(`${url}/healthz`).then(
        (response) => response.ok,
        () => false,
      );
      return healthy ? true : undefined;
    },
    {
      intervalMs: 50,
      timeoutMs,
      onTimeout: () => {
        child.kill('SIGKILL');
        return new Error(`the broker did not answer /healthz within ${timeoutMs} ms:\n${stderr.join('\n')}`);
      },
    },
  );

  const generatedPassword = /^\s+password: (\S+)$/m.exec(stderr.join('\n'))?.[1];
  const password = env.BROKER_PASSWORD ?? generatedPassword ?? '';
  const logs = () =>
    stdout.flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, any>];
      } catch {
        return [];
      }
    });
  return {
    url,
    client: new OsbClient(url, env.BROKER_USERNAME ?? 'broker', password),
    stdout,
    stderr,
    generatedPassword,
    logs,
    waitForLog(match, waitMs = 10_000) {
      return waitFor(() => logs().find(match), {
        intervalMs: 50,
        timeoutMs: waitMs,
        onTimeout: () => new Error(`no such log line within ${waitMs} ms; log:\n${stdout.join('\n')}`),
      });
    },
    async kill(signal = 'SIGKILL') {
      if (!ended) child.kill(signal);
      return exited;
    },
    exited,
  };
}

/** Last-resort cleanup: SIGKILLs every broker process spawnBroker started in this test file and still running. */
export async function killAllBrokers(): Promise<void> {
  await Promise.all(
    [...live].map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGKILL');
        }),
    ),
  );
}

function collectLines(stream: NodeJS.ReadableStream): string[] {
  const lines: string[] = [];
  let pending = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    pending += chunk;
    const parts = pending.split('\n');
    pending = parts.pop()!;
    lines.push(...parts);
  });
  stream.on('end', () => {
    if (pending) lines.push(pending);
  });
  return lines;
}
