import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import type { ListedInstance } from '../api/listing.js';
import { parseParameters, usageOf } from './args.js';
import { describeBody, expect } from './client.js';
import { findOffering, findPlan } from './lookup.js';
import { CliError, UsageError } from './errors.js';
import { shellWord } from './names.js';
import { instancePath, list, resolve, type Run } from './run.js';
import { followOperation, operationQuery } from './steps.js';

export const DAY_TWO_RUNNERS: Record<string, (run: Run) => Promise<void>> = { update, info, logs, restart };

const operatorPath = (id: string) => `/broker/v1/instances/${encodeURIComponent(id)}`;

// update

async function update({ client, args, flags, io, command }: Run): Promise<void> {
  if (flags.plan === undefined && flags.parameters === undefined) throw new UsageError('update: give --plan, -c or both', usageOf(command));
  const parameters = parseParameters(flags.parameters, usageOf(command));
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  const offering = findOffering(await client.catalog(), instance.service_id);
  const plan = flags.plan === undefined ? undefined : findPlan(offering, flags.plan);
  if (plan?.id === instance.plan_id && !parameters) return io.out(`${name} is on plan ${plan.name} already; nothing to change.`);
  const changes = [plan && `plan ${instance.plan_name} → ${plan.name}`, parameters && `parameters ${JSON.stringify(parameters)}`].filter(Boolean).join(', ');
  io.err(`Updating ${name} (${changes})…`);
  const reply = await client.request('PATCH', `${instancePath(instance.id)}?accepts_incomplete=true`, {
    service_id: instance.service_id,
    ...(plan ? { plan_id: plan.id } : {}),
    ...(parameters ? { parameters } : {}),
    previous_values: { service_id: instance.service_id, plan_id: instance.plan_id },
  });
  if (![200, 202].includes(reply.status)) throw new CliError(`the broker refused to update ${name}: ${describeBody(reply.body)}`);
  if (reply.status === 202) {
    const done = await followOperation(client, io, `${instancePath(instance.id)}/last_operation${operationQuery(reply.body)}`, plan?.maximum_polling_duration);
    if (done.state !== 'succeeded') throw new CliError(`updating ${name} failed: ${done.description ?? 'the instance disappeared'}`);
  }
  io.out(`Updated ${name}: ${changes}.`);
}

// restart

async function restart({ client, args, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  io.err(`Restarting ${name} (${instance.service_name} ${instance.plan_name})…`);
  const reply = await client.request('POST', `${operatorPath(instance.id)}/restart`);
  if (reply.status === 404 && reply.body.error !== 'NotFound') {
    throw new CliError(`the broker at ${client.settings.url} cannot restart instances (POST …/restart answered 404); it is older than this CLI`);
  }
  if (reply.status !== 202) throw new CliError(`the broker refused to restart ${name}: ${describeBody(reply.body)}`);
  const done = await followOperation(client, io, `${instancePath(instance.id)}/last_operation${operationQuery(reply.body)}`);
  if (done.state !== 'succeeded') throw new CliError(`restarting ${name} failed: ${done.description ?? 'the instance disappeared'}`);
  io.out(`Restarted ${name}.`);
}

// logs

async function logs({ client, args, flags, io, command }: Run): Promise<void> {
  const tail = flags.tail ?? '100';
  if (!/^\d+$/.test(tail)) throw new UsageError(`--tail takes a number of lines, not "${tail}"`, usageOf(command));
  const instance = resolve(await client.instances(), args[0]!);
  const response = await client.stream('GET', `${operatorPath(instance.id)}/logs?tail=${tail}${flags.follow ? '&follow=true' : ''}`);
  if (!response.ok) {
    const text = await response.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // Not JSON: the text is the message.
    }
    throw new CliError(`the broker answered ${response.status} when reading the log of ${instance.name ?? instance.id}: ${describeBody(body)}`);
  }
  if (!response.body) return;
  const stop = new AbortController();
  // Ctrl-C while following ends the command quietly: the log is what was asked for, not an error.
  const interrupted = () => stop.abort();
  process.once('SIGINT', interrupted);
  try {
    await pipeline(Readable.fromWeb(response.body), io.stdout, { end: false, signal: stop.signal });
  } catch (error) {
    if (!stop.signal.aborted) throw error;
  } finally {
    process.off('SIGINT', interrupted);
  }
}

// info

interface Details {
  name?: string;
  offering: { name: string };
  plan: { name: string; limits?: { memoryMb: number; cpus: number; pids: number } };
  state: string;
  version: string;
  endpoints: string[];
  container_name: string;
  container?: { status: string; running: boolean; startedAt?: string; finishedAt?: string; exitCode?: number; restartCount: number; health?: string };
  health?: { summary: string };
  explanation?: string;
}

interface BackupRow {
  id: string;
  state: string;
  created: string;
  finished?: string;
  size?: number;
}

async function info({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  const [detailsReply, backupsReply] = await Promise.all([
    client.request('GET', operatorPath(instance.id)),
    client.request('GET', `${operatorPath(instance.id)}/backups`),
  ]);
  expect(detailsReply, [200], `reading ${name}`);
  const details = detailsReply.body as unknown as Details;
  const backups = backupsReply.status === 200 ? ((backupsReply.body as { backups?: BackupRow[] }).backups ?? []) : undefined;
  const lastBackup = backups?.filter((backup) => backup.state !== 'in progress').sort((a, b) => b.created.localeCompare(a.created))[0];
  const disk = (instance as ListedInstance & { disk?: unknown }).disk;
  if (flags.json) return io.out(JSON.stringify({ instance, details, last_backup: lastBackup ?? null }, null, 2));
  const limits = details.plan.limits;
  const rows: Array<[string, string]> = [
    ['Name', `${name} (instance ${instance.id})`],
    ['Offering', `${details.offering.name} ${details.plan.name}, version ${details.version}`],
    ...(limits ? [['Limits', `${limits.memoryMb} MiB memory, ${limits.cpus} CPU, ${limits.pids} processes`] as [string, string]] : []),
    ['State', instance.state === 'ready' ? engineState(details) : `${instance.state} (${engineState(details)})`],
    ['Endpoint', details.endpoints.join(', ') || '-'],
    ['Container', details.container_name],
    ...(disk !== undefined ? [['Disk', describeDisk(disk)] as [string, string]] : []),
    ['Bindings', list(instance.bindings.map((binding) => `${binding.name ?? binding.id}${binding.state === 'ready' ? '' : ` (${binding.state})`}`))],
    [
      'Last backup',
      backups === undefined
        ? backupsReply.status === 404 && backupsReply.body.error !== 'NotFound'
          ? 'this broker keeps no backups'
          : `none (${describeBody(backupsReply.body)})`
        : lastBackup
          ? describeBackup(lastBackup)
          : 'none yet',
    ],
    [
      'Last operation',
      instance.last_operation ? `${instance.last_operation.type} ${instance.last_operation.state}: ${instance.last_operation.description}` : '-',
    ],
  ];
  const width = Math.max(...rows.map(([label]) => label.length)) + 1;
  io.out(rows.map(([label, value]) => `${`${label}:`.padEnd(width)} ${value}`).join('\n'));
  if (details.explanation) io.out(`\n${details.explanation}`);
  if (instance.state === 'ready') io.err(`Logs: osb-docker logs ${shellWord(name)} -f    Shell: osb-docker connect ${shellWord(name)}`);
}

/** The container as the engine reports it: "running since …, healthy" or "exited with code 137 at …". */
function engineState(details: Details): string {
  const container = details.container;
  if (!container) return 'no container';
  const health = container.health ? `, health ${container.health}` : '';
  const restarts = container.restartCount ? `, restarted ${container.restartCount} times by Docker` : '';
  if (container.running) return `running since ${container.startedAt ?? '?'}${health}${restarts}`;
  const code = container.exitCode !== undefined ? ` with code ${container.exitCode}${container.exitCode === 137 ? ' (killed)' : ''}` : '';
  return `${container.status}${code}${container.finishedAt ? ` at ${container.finishedAt}` : ''}${restarts}`;
}

function describeBackup(backup: BackupRow): string {
  const size = backup.size !== undefined ? `, ${bytes(backup.size)}` : '';
  return `${backup.id} ${backup.state} at ${backup.finished ?? backup.created}${size}`;
}

/** The listing's disk usage, whatever its shape: bytes, or named byte counts. */
function describeDisk(disk: unknown): string {
  if (typeof disk === 'number') return bytes(disk);
  const { used_bytes: used, limit_bytes: limit, measured_at: at } = (disk ?? {}) as { used_bytes?: unknown; limit_bytes?: unknown; measured_at?: unknown };
  if (typeof used === 'number') {
    const of = typeof limit === 'number' ? ` of ${bytes(limit)} (${Math.round((used / limit) * 100)} %)` : '';
    return `${bytes(used)}${of} used${typeof at === 'string' ? `, measured at ${at}` : ''}`;
  }
  if (disk && typeof disk === 'object') {
    return Object.entries(disk)
      .map(([key, value]) => `${key.replace(/_/g, ' ')} ${typeof value === 'number' && /bytes/.test(key) ? bytes(value) : String(value)}`)
      .join(', ');
  }
  return String(disk);
}

function bytes(count: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}
