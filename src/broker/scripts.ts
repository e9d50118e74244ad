import type { Config } from '../config.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { DockerEngine } from '../docker/engine.js';
import type { BindingRecord, InstanceRecord } from '../store/records.js';
import type { Readable } from 'node:stream';
import { waitFor } from '../wait.js';

const READY_POLL_MS = 100;
/** After the time-out, `timeout` sends TERM; a script that ignores it is killed this much later. */
const SCRIPT_KILL_AFTER_SECONDS = 5;
/** coreutils `timeout` exits with 124 when TERM stopped the command, 137 (128 + KILL) when it had to kill it. */
const TIMED_OUT = 124;
const KILLED = 137;

export class ScriptError extends Error {}

/** An instance's container and the engine that runs it (the local one, or a Swarm node's). */
export interface ContainerTarget {
  engine: DockerEngine;
  container: string;
}

/** Runs the offering's scripts (/osb/<name>) inside an instance's container, wherever that container runs. */
export class InstanceScripts {
  constructor(private readonly config: Pick<Config, 'scriptTimeoutSeconds'>) {}

  /** Returns once /osb/ready succeeds; fails at once if the container stops meanwhile. */
  async waitReady(target: () => Promise<ContainerTarget>, definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void> {
    const seconds = definition.container.readyTimeoutSeconds;
    await waitFor(
      async () => {
        const { engine, container } = await target();
        const result = await engine
          .exec(container, ['timeout', '-k', '2s', '10s', '/osb/ready'], {
            user: definition.container.execUser,
            env: this.env(definition, instance),
            timeoutMs: 15_000,
            signal,
          })
          .catch((error: Error) => ({ exitCode: -1, stdout: '', stderr: error.message }));
        if (result.exitCode === 0) return true;
        const state = await engine.inspectContainer(container);
        if (!state?.running) {
          throw new Error(`the container stopped while starting (state: ${state?.status ?? 'missing'}); see its logs`);
        }
        return undefined;
      },
      { intervalMs: READY_POLL_MS, timeoutMs: seconds * 1000, signal, onTimeout: () => new Error(`the service was not ready within ${seconds} s`) },
    );
  }

  /** Creates the binding's user; returns extra credential fields the bind script printed as JSON. */
  async bind(target: ContainerTarget, definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal) {
    const output = await this.run(target, definition, instance, 'bind', bindingEnv(binding), signal);
    const text = output.trim();
    if (!text) return {};
    try {
      const extra = JSON.parse(text) as unknown;
      if (typeof extra !== 'object' || extra === null || Array.isArray(extra)) throw new Error('not an object');
      return extra as Record<string, string | number>;
    } catch {
      throw new ScriptError('the bind script printed something other than a JSON object');
    }
  }

  unbind(target: ContainerTarget, definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal) {
    return this.run(target, definition, instance, 'unbind', bindingEnv(binding), signal);
  }

  /**
   * Runs /osb/<name> in the container; its output is returned, a failure carries its stderr with secrets removed.
   * An offering without that script has nothing to do at that step.
   */
  async run(
    target: ContainerTarget,
    definition: ServiceDefinition,
    instance: InstanceRecord,
    name: string,
    extraEnv: Record<string, string>,
    signal: AbortSignal,
  ): Promise<string> {
    if (!definition.scripts.has(name)) return '';
    const env = { ...this.env(definition, instance), ...extraEnv };
    // `timeout` stops the script inside the container; the broker's own deadline is only the last resort.
    const command = ['timeout', '-k', `${SCRIPT_KILL_AFTER_SECONDS}s`, `${this.config.scriptTimeoutSeconds}s`, `/osb/${name}`];
    const started = Date.now();
    const result = await target.engine.exec(target.container, command, {
      user: definition.container.execUser,
      env,
      timeoutMs: (this.config.scriptTimeoutSeconds + SCRIPT_KILL_AFTER_SECONDS + 5) * 1000,
      signal,
    });
    const overran = Date.now() - started >= this.config.scriptTimeoutSeconds * 1000;
    if (result.exitCode === TIMED_OUT || (result.exitCode === KILLED && overran))
      throw new ScriptError(`${name} script did not finish within ${this.config.scriptTimeoutSeconds} s and was stopped`);
    if (result.exitCode !== 0) {
      const secrets = [env.ADMIN_PASSWORD, env.BINDING_PASSWORD].filter((value): value is string => Boolean(value));
      const reason = redact(result.stderr.trim().split('\n').slice(-3).join(' '), secrets) || `exit code ${result.exitCode}`;
      throw new ScriptError(`${name} script failed: ${reason}`);
    }
    return result.stdout;
  }

  /**
   * Runs /osb/<name> with `input` as its stdin and its stdout as a stream (backup and restore: dumps of any size,
   * never held in memory). `finished` rejects with a ScriptError, secrets removed, when the script fails.
   */
  async stream(
    target: ContainerTarget,
    definition: ServiceDefinition,
    instance: InstanceRecord,
    name: string,
    options: { input?: Readable; timeoutSeconds: number; signal: AbortSignal },
  ): Promise<{ stdout: Readable; finished: Promise<void> }> {
    const env = this.env(definition, instance);
    const command = ['timeout', '-k', `${SCRIPT_KILL_AFTER_SECONDS}s`, `${options.timeoutSeconds}s`, `/osb/${name}`];
    const run = await target.engine.execStream(target.container, command, {
      user: definition.container.execUser,
      env,
      input: options.input,
      signal: options.signal,
    });
    const finished = run.finished.then(({ exitCode, stderr }) => {
      if (exitCode === TIMED_OUT || exitCode === KILLED)
        throw new ScriptError(`${name} script did not finish within ${options.timeoutSeconds} s and was stopped`);
      if (exitCode !== 0) {
        if (/failed to run command .\/osb\/[a-z-]+.: No such file/.test(stderr)) throw missingScript(definition, instance, name);
        const reason = redact(stderr.trim().split('\n').slice(-3).join(' '), [env.ADMIN_PASSWORD!]) || `exit code ${exitCode}`;
        throw new ScriptError(`${name} script failed: ${reason}`);
      }
    });
    finished.catch(() => {}); // the caller awaits it
    return { stdout: run.stdout, finished };
  }

  /** Environment handed to every script: the admin login, the plan's limits, the instance's parameters as PARAM_<NAME>. */
  private env(definition: ServiceDefinition, instance: InstanceRecord): Record<string, string> {
    const limits = definition.limits.get(instance.planId);
    const env: Record<string, string> = {
      INSTANCE_ID: instance.id,
      ADMIN_USERNAME: definition.container.adminUsername,
      ADMIN_PASSWORD: instance.secrets.adminPassword,
      ...(limits ? { PLAN_MEMORY_MB: String(limits.memoryMb), PLAN_CPUS: String(limits.cpus), PLAN_PIDS: String(limits.pids) } : {}),
    };
    for (const [name, value] of Object.entries(instance.parameters)) {
      if (value === undefined || value === null) continue;
      env[`PARAM_${name.toUpperCase()}`] = typeof value === 'string' ? value : JSON.stringify(value);
    }
    return env;
  }
}

/**
 * A container made from an image older than the script (backup and restore came after the first instances):
 * coreutils' timeout says "failed to run command '/osb/backup': No such file or directory" (quotes per locale).
 */
function missingScript(definition: ServiceDefinition, instance: InstanceRecord, name: string): ScriptError {
  const current = definition.maintenanceInfo.version;
  const upgrade =
    instance.maintenanceVersion === current
      ? "its container was made from an earlier build of that version's image"
      : `upgrade the instance to maintenance version ${current} (an update with that maintenance_info) and try again`;
  return new ScriptError(`the instance's container has no ${name} script: it runs maintenance version ${instance.maintenanceVersion}; ${upgrade}`);
}

function bindingEnv(binding: BindingRecord): Record<string, string> {
  return { BINDING_ID: binding.id, BINDING_USERNAME: binding.username, BINDING_PASSWORD: binding.secrets.password };
}

export function redact(text: string, secrets: string[]): string {
  return secrets.reduce((result, secret) => result.split(secret).join('[redacted]'), text);
}
