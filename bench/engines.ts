/**
 * Provision-to-ready for every offering of the catalog: the broker next to the engine's own `docker run` of the same
 * image, followed by what the broker does before it says "ready" (poll /osb/ready, then /osb/setup and /osb/check).
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { imageTag, type ServiceDefinition } from '../src/catalog/definition.js';
import { validateParameters } from '../src/catalog/parameters.js';
import type { BrokerSide } from './broker-side.js';
import { docker, freePort, rawLeftovers, removeRaw } from './raw.js';
import { median, ms, p95 } from './stats.js';

/** The offering's first plan, run with `docker run` and its scripts: returns ms until /osb/check passes. */
export async function rawEngine(definition: ServiceDefinition): Promise<{ name: string; totalMs: number }> {
  const { container } = definition;
  const plan = definition.offering.plans[0]!;
  const limits = definition.limits.get(plan.id)!;
  const name = `osb-bench-raw-${randomBytes(4).toString('hex')}`;
  const volume = `${name}-data`;
  rawLeftovers.set(name, volume);
  const env: Record<string, string> = { ADMIN_USERNAME: container.adminUsername, ADMIN_PASSWORD: randomBytes(16).toString('hex'), INSTANCE_ID: name };
  for (const [key, value] of Object.entries(validateParameters(definition.parameterSchema, {}, 'parameters'))) {
    env[`PARAM_${key.toUpperCase()}`] = typeof value === 'string' ? value : JSON.stringify(value);
  }
  const ports = [container.port, ...Object.values(container.extraPorts)];
  const publish = (await Promise.all(ports.map(async (port) => ['-p', `127.0.0.1:${await freePort()}:${port}`]))).flat();
  const exec = (script: string) =>
    docker(['exec', ...(container.execUser ? ['-u', container.execUser] : []), ...Object.keys(env).flatMap((key) => ['-e', key]), name, `/osb/${script}`], env);

  const started = performance.now();
  await docker([
    'run',
    '-d',
    '--name',
    name,
    '-v',
    `${volume}:${container.dataPath}`,
    ...publish,
    '--memory',
    `${limits.memoryMb}m`,
    '--memory-swap',
    `${limits.memoryMb}m`,
    '--cpus',
    String(limits.cpus),
    '--pids-limit',
    String(limits.pids),
    '--security-opt',
    'no-new-privileges',
    ...container.capDrop.flatMap((cap) => ['--cap-drop', cap]),
    ...container.capAdd.flatMap((cap) => ['--cap-add', cap]),
    imageTag(definition),
  ]);
  const deadline = Date.now() + container.readyTimeoutSeconds * 1000;
  while (
    !(await exec('ready').then(
      () => true,
      () => false,
    ))
  ) {
    if (Date.now() > deadline) throw new Error(`${name} (${definition.offering.name}) was not ready in time`);
    await sleep(50);
  }
  for (const script of ['setup', 'check']) if (definition.scripts.has(script)) await exec(script);
  return { name, totalMs: performance.now() - started };
}

export interface EngineRow {
  offering: string;
  broker: number[];
  raw: number[];
}

/** N alternating rounds per offering, after one untimed round each (which also builds a missing image). */
export async function benchEngines(broker: BrokerSide, definitions: ServiceDefinition[], rounds: number): Promise<EngineRow[]> {
  const rows: EngineRow[] = [];
  for (const definition of definitions) {
    const offering = { serviceId: definition.offering.id, planId: definition.offering.plans[0]!.id };
    process.stderr.write(`${definition.offering.name}: warm-up ...\n`);
    await broker.deprovision((await broker.provision(offering)).id, offering);
    await removeRaw((await rawEngine(definition)).name);
    const row: EngineRow = { offering: definition.offering.name, broker: [], raw: [] };
    for (let round = 1; round <= rounds; round++) {
      process.stderr.write(`${definition.offering.name}: ${round}/${rounds} ...\n`);
      const instance = await broker.provision(offering);
      row.broker.push(instance.totalMs);
      await broker.deprovision(instance.id, offering);
      const raw = await rawEngine(definition);
      row.raw.push(raw.totalMs);
      await removeRaw(raw.name);
    }
    rows.push(row);
  }
  return rows;
}

export function engineTableRow(row: EngineRow): string[] {
  return [
    row.offering,
    ms(median(row.broker)),
    ms(p95(row.broker)),
    ms(median(row.raw)),
    ms(p95(row.raw)),
    `${(median(row.broker) / median(row.raw)).toFixed(2)}x`,
  ];
}
