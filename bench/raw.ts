/** The reference: the same image driven by the engine's own `docker` CLI, without the broker. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);
export const IMAGE = 'osb-broker/postgresql:15.0.2';
const DATABASE = 'app';

/** Runs `docker ...`; extra env reaches `docker exec -e NAME` (no value) so secrets stay off argv. */
export async function docker(args: string[], env: Record<string, string> = {}): Promise<string> {
  try {
    const { stdout } = await run('docker', args, { env: { ...process.env, ...env } });
    return stdout.trim();
  } catch (error) {
    const { stderr, message } = error as { stderr?: string; message: string };
    throw new Error(`docker ${args[0]} failed: ${stderr?.trim() || message}`, { cause: error });
  }
}

/** A free loopback port, picked now and passed to `docker run -p` as a fixed port. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer().once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface RawInstance {
  name: string;
  volume: string;
  /** Milliseconds from `docker run` to the first successful password login. */
  totalMs: number;
  /** Milliseconds spent in each step, in order. */
  phases: Record<string, number>;
}

/** Containers (name -> volume) still to remove; removeRaw empties it, the caller's finally block sweeps it. */
export const rawLeftovers = new Map<string, string>();

/**
 * docker run with the small plan's limits, then what the broker does before it says "ready":
 * poll /osb/ready, run /osb/setup once, then loop until a password login through the published port works.
 */
export async function startRaw(): Promise<RawInstance> {
  const suffix = randomBytes(4).toString('hex');
  const name = `osb-bench-raw-${suffix}`;
  const volume = `${name}-data`;
  const port = await freePort();
  const admin = { ADMIN_USERNAME: 'osb_admin', ADMIN_PASSWORD: randomBytes(16).toString('hex'), PARAM_DATABASE: DATABASE };
  rawLeftovers.set(name, volume);

  const phases: Record<string, number> = {};
  const started = performance.now();
  let mark = started;
  const lap = (phase: string) => {
    const now = performance.now();
    phases[phase] = now - mark;
    mark = now;
  };

  await docker([
    'run',
    '-d',
    '--name',
    name,
    '-v',
    `${volume}:/var/lib/postgresql/data`,
    '-p',
    `127.0.0.1:${port}:5432`,
    '--memory',
    '256m',
    '--cpus',
    '0.5',
    '--pids-limit',
    '128',
    '--security-opt',
    'no-new-privileges',
    '--cap-drop',
    'ALL',
    IMAGE,
  ]);
  lap('create+start');
  const deadline = Date.now() + 60_000;
  while (
    !(await docker(['exec', '-u', 'postgres', name, '/osb/ready']).then(
      () => true,
      () => false,
    ))
  ) {
    if (Date.now() > deadline) throw new Error(`${name} was not ready within a minute`);
    await sleep(50);
  }
  lap('ready');
  await docker(['exec', '-u', 'postgres', '-e', 'ADMIN_USERNAME', '-e', 'ADMIN_PASSWORD', '-e', 'PARAM_DATABASE', name, '/osb/setup'], admin);
  lap('setup');
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({
      host: '127.0.0.1',
      port,
      user: admin.ADMIN_USERNAME,
      password: admin.ADMIN_PASSWORD,
      database: DATABASE,
      connectionTimeoutMillis: 2000,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      break;
    } catch (error) {
      if (attempt > 200) throw error;
      await sleep(50);
    } finally {
      await client.end().catch(() => {});
    }
  }
  lap('login');
  return { name, volume, totalMs: performance.now() - started, phases };
}

/** One binding user via /osb/bind, exactly as the broker runs it; returns its latency in ms. */
export async function rawBind(container: string): Promise<number> {
  const env = { BINDING_USERNAME: `u${randomBytes(7).toString('hex')}`, BINDING_PASSWORD: randomBytes(16).toString('hex'), PARAM_DATABASE: DATABASE };
  const started = performance.now();
  await docker(['exec', '-u', 'postgres', '-e', 'BINDING_USERNAME', '-e', 'BINDING_PASSWORD', '-e', 'PARAM_DATABASE', container, '/osb/bind'], env);
  return performance.now() - started;
}

export async function removeRaw(name: string): Promise<void> {
  // A run that failed before `docker run` created anything leaves nothing to remove.
  await docker(['rm', '-f', '-v', name]).catch((error: Error) => {
    if (!/no such container/i.test(error.message)) throw error;
  });
  await docker(['volume', 'rm', '-f', rawLeftovers.get(name) ?? `${name}-data`]);
  rawLeftovers.delete(name);
}
