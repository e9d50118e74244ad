import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { resolve as absolutePath } from 'node:path';
import type { Plan, ServiceOffering } from '../osb/types.js';
import { parseParameters, usageOf } from './args.js';
import type { ListedBinding, ListedInstance } from '../api/listing.js';
import { BrokerClient, describeBody, expect, PLATFORM } from './client.js';
import { BACKUP_RUNNERS, restoreSource } from './backup-commands.js';
import { rotate } from './rotate.js';
import { instancePath, list, resolve, type Io, type Run } from './run.js';
import { CliError, UsageError } from './errors.js';
import { formatTable } from './table.js';
import { checkNewName, shellWord } from './names.js';
import { findOffering, findPlan } from './lookup.js';
import { followOperation, operationQuery } from './steps.js';
import { DAY_TWO_RUNNERS } from './day-two.js';
import { connect } from './connect.js';
import { k8sSecrets, writeServiceBindingRoot } from './service-binding.js';
import { buildVcapServices, defaultBindingName, exportLine, type BoundService } from './vcap.js';

export const bindingLabel = (binding: ListedBinding) => binding.name ?? binding.id;
export const bindingPath = (instanceId: string, bindingId: string) => `${instancePath(instanceId)}/service_bindings/${encodeURIComponent(bindingId)}`;
const idQuery = (instance: ListedInstance) => `service_id=${encodeURIComponent(instance.service_id)}&plan_id=${encodeURIComponent(instance.plan_id)}`;

export type { Io };

export const COMMAND_RUNNERS: Record<string, (run: Run) => Promise<void>> = {
  catalog: catalogCommand,
  create,
  list: listCommand,
  bind,
  unbind,
  delete: deleteCommand,
  dashboard,
  env,
  clone,
  rotate,
  ...BACKUP_RUNNERS,
  ...DAY_TWO_RUNNERS,
  connect,
};

// catalog

async function catalogCommand({ client, flags, io }: Run): Promise<void> {
  const offerings = await client.catalog();
  // With dashboard SSO the catalog carries the clients' secret for the platform (OSB's dashboard_client); a terminal gets no copy.
  const shown = offerings.map((offering) =>
    offering.dashboard_client ? { ...offering, dashboard_client: { ...offering.dashboard_client, secret: '(hidden)' } } : offering,
  );
  if (flags.json) return io.out(JSON.stringify(shown, null, 2));
  io.out(
    formatTable(
      ['OFFERING', 'PLANS', 'DESCRIPTION', 'TAGS'],
      offerings.map((offering) => [offering.name, offering.plans.map((plan) => plan.name).join(', '), offering.description, (offering.tags ?? []).join(', ')]),
      { maxWidth: { DESCRIPTION: 60 } },
    ),
  );
}

// create

async function create({ client, args, flags, io, command }: Run): Promise<void> {
  const [offeringName, planName, name] = args as [string, string, string];
  checkNewName(name, usageOf(command));
  let parameters = parseParameters(flags.parameters, usageOf(command));
  if (flags.fromBackup !== undefined) {
    if (parameters?.restore_from !== undefined) throw new UsageError('--from-backup and a restore_from in -c cannot be used together', usageOf(command));
    parameters = { ...parameters, restore_from: await restoreSource(client, flags.fromBackup) };
  }
  const offering = findOffering(await client.catalog(), offeringName, io);
  const plan = findPlan(offering, planName);
  await provision(client, io, { offering, plan, name, parameters, org: flags.org, space: flags.space });
}

// clone

async function clone({ client, args, flags, io, command }: Run): Promise<void> {
  const [sourceName, name] = args as [string, string];
  checkNewName(name, usageOf(command));
  const source = resolve(await client.instances(), sourceName);
  const offering = findOffering(await client.catalog(), source.service_id);
  const plan = findPlan(offering, source.plan_id);
  io.err(`Cloning ${source.name ?? source.id} into a new instance: a fresh backup of it is restored there.`);
  await provision(client, io, { offering, plan, name, parameters: { clone_of: source.id }, org: flags.org, space: flags.space });
}

interface NewInstance {
  offering: ServiceOffering;
  plan: Plan;
  name: string;
  parameters?: Record<string, unknown>;
  org?: string;
  space?: string;
}

/** PUT with a new id, then follows the operation to its end; a name already in use is refused first. */
async function provision(client: BrokerClient, io: Io, { offering, plan, name, parameters, org, space }: NewInstance): Promise<void> {
  const taken = (await client.instances()).find((instance) => instance.name === name);
  if (taken) {
    throw new CliError(
      `a service instance named "${name}" already exists (${taken.service_name} ${taken.plan_name}, ${taken.state}); pick another name or remove it with \`osb-docker delete ${shellWord(name)}\``,
    );
  }
  const id = randomUUID();
  io.err(`Creating ${name} (${offering.name} ${plan.name})…`);
  const reply = await client.request('PUT', `${instancePath(id)}?accepts_incomplete=true`, {
    service_id: offering.id,
    plan_id: plan.id,
    organization_guid: org ?? 'local',
    space_guid: space ?? 'local',
    context: { platform: PLATFORM, instance_name: name },
    ...(parameters ? { parameters } : {}),
  });
  if (![200, 201, 202].includes(reply.status)) throw new CliError(`the broker refused to create ${name}: ${describeBody(reply.body)}`);
  const started = Date.now();
  if (reply.status === 202) {
    const done = await followOperation(client, io, `${instancePath(id)}/last_operation${operationQuery(reply.body)}`, plan.maximum_polling_duration ?? 3600);
    if (done.state !== 'succeeded') {
      throw new CliError(
        `creating ${name} failed: ${done.description ?? 'the instance disappeared'}\n` +
          `The name stays taken until \`osb-docker delete ${shellWord(name)}\` removes what is left.`,
      );
    }
  }
  const fetched = await client.request('GET', instancePath(id));
  const dashboardUrl = (fetched.status === 200 && fetched.body.dashboard_url) || reply.body.dashboard_url;
  io.out(`Created ${name}: ${offering.name} ${plan.name} (instance ${id}).`);
  if (dashboardUrl) io.out(`Dashboard: ${dashboardUrl}`);
  io.err(`Ready after ${((Date.now() - started) / 1000).toFixed(1)} s. Next: osb-docker bind ${shellWord(name)}`);
}

// list

async function listCommand({ client, flags, io }: Run): Promise<void> {
  const instances = await client.instances();
  if (flags.json) return io.out(JSON.stringify(instances, null, 2));
  if (instances.length === 0) return io.out('No service instances. Create one with: osb-docker create <offering> <plan> <name>');
  io.out(
    formatTable(
      ['NAME', 'OFFERING', 'PLAN', 'STATE', 'ENDPOINT', 'BINDINGS', 'LAST OPERATION'],
      instances.map((instance) => [
        instance.name ?? instance.id,
        instance.service_name,
        instance.plan_name,
        stateColumn(instance),
        instance.endpoint ?? '-',
        instance.bindings.map((binding) => (binding.state === 'ready' ? bindingLabel(binding) : `${bindingLabel(binding)} (${binding.state})`)).join(', ') ||
          '-',
        instance.last_operation
          ? `${instance.last_operation.type} ${instance.last_operation.state}${instance.last_operation.state === 'failed' ? `: ${instance.last_operation.description}` : ''}`
          : '-',
      ]),
    ),
  );
  // Why each down instance is down, in full, under the table.
  const down = instances.filter((instance) => instance.state === 'ready' && instance.health?.state === 'down');
  if (down.length) io.out(['', ...down.map((instance) => `${instance.name ?? instance.id} is ${instance.health!.summary}`)].join('\n'));
}

/**
 * The record's state, unless the engine says otherwise: "down since …" for a ready instance the broker found not
 * running, and the container's own state (e.g. "exited (code 137)") when the listing read it not running.
 */
function stateColumn(instance: ListedInstance): string {
  const health = instance.health;
  if (instance.state !== 'ready') return instance.state;
  if (health?.state === 'down') return `down since ${health.since}`;
  const container = instance.container;
  if (container && container.state !== 'running') return `${container.state}${container.exit_code !== undefined ? ` (code ${container.exit_code})` : ''}`;
  if (!health) return instance.state;
  if (health.state === 'repaired' && health.repaired_at) return `ready (repaired ${health.repaired_at})`;
  return instance.state;
}

// bind

async function bind({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  if (instance.state !== 'ready') throw new CliError(`${name} is ${instance.state}, not ready; it cannot be bound (see \`osb-docker list\`)`);
  const taken = new Set(instance.bindings.map(bindingLabel));
  let bindingName = flags.as;
  if (bindingName !== undefined && taken.has(bindingName)) {
    throw new CliError(`${name} already has a binding named "${bindingName}"; bindings: ${list([...taken])}`);
  }
  if (bindingName === undefined) {
    bindingName = defaultBindingName(name);
    for (let n = 2; taken.has(bindingName); n++) bindingName = `${defaultBindingName(name)}-${n}`;
  }
  const id = randomUUID();
  const path = bindingPath(instance.id, id);
  const reply = await client.request('PUT', `${path}?accepts_incomplete=true`, {
    service_id: instance.service_id,
    plan_id: instance.plan_id,
    context: { platform: PLATFORM, binding_name: bindingName },
  });
  if (![200, 201, 202].includes(reply.status)) throw new CliError(`the broker refused to bind ${name}: ${describeBody(reply.body)}`);
  let result = reply.body;
  if (reply.status === 202) {
    const operation = typeof reply.body.operation === 'string' ? `?operation=${encodeURIComponent(reply.body.operation)}` : '';
    const done = await client.waitFor(`${path}/last_operation${operation}`, (description) => io.err(`  ${description}`));
    if (done.state !== 'succeeded') throw new CliError(`binding ${name} failed: ${done.description ?? 'the binding disappeared'}`);
    const fetched = await client.request('GET', path);
    expect(fetched, [200], `fetching the new binding of ${name}`);
    result = fetched.body;
  }
  io.out(`Bound ${name} as ${bindingName} (binding ${id}).`);
  if (flags.showCredentials) {
    io.out(
      JSON.stringify({ credentials: result.credentials ?? {}, ...(result.syslog_drain_url ? { syslog_drain_url: result.syslog_drain_url } : {}) }, null, 2),
    );
    return;
  }
  const endpoints = (result.endpoints ?? []).map((endpoint) => `${endpoint.host}:${endpoint.ports.join(',')}`);
  if (endpoints.length) io.out(`Endpoint: ${endpoints.join(' ')}`);
  io.out(`Credential fields: ${list(Object.keys(result.credentials ?? {}))}${result.syslog_drain_url ? '; syslog_drain_url' : ''}`);
  io.err(`Use them with: eval "$(osb-docker env ${shellWord(name)})"  (or bind --show-credentials to print them)`);
}

// unbind and delete

export async function unbindOne(client: BrokerClient, instance: ListedInstance, binding: ListedBinding, io: Io): Promise<void> {
  const path = bindingPath(instance.id, binding.id);
  const reply = await client.request('DELETE', `${path}?accepts_incomplete=true&${idQuery(instance)}`);
  const name = instance.name ?? instance.id;
  if (reply.status === 410) return io.out(`Binding ${bindingLabel(binding)} of ${name} was already gone.`);
  if (![200, 202].includes(reply.status)) throw new CliError(`the broker refused to unbind ${bindingLabel(binding)} of ${name}: ${describeBody(reply.body)}`);
  if (reply.status === 202) {
    const operation = typeof reply.body.operation === 'string' ? `?operation=${encodeURIComponent(reply.body.operation)}` : '';
    const done = await client.waitFor(`${path}/last_operation${operation}`, (description) => io.err(`  ${description}`));
    if (done.state === 'failed') throw new CliError(`unbinding ${bindingLabel(binding)} of ${name} failed: ${done.description}`);
  }
  io.out(`Unbound ${bindingLabel(binding)} from ${name}.`);
}

async function unbind({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  const labels = instance.bindings.map(bindingLabel);
  let chosen: ListedBinding[];
  if (flags.as !== undefined) {
    const binding = instance.bindings.find((candidate) => candidate.name === flags.as) ?? instance.bindings.find((candidate) => candidate.id === flags.as);
    if (!binding) throw new CliError(`${name} has no binding named "${flags.as}"; bindings: ${list(labels)}`);
    chosen = [binding];
  } else if (instance.bindings.length === 0) {
    throw new CliError(`${name} has no bindings`);
  } else if (instance.bindings.length > 1 && !flags.all) {
    throw new CliError(`${name} has ${instance.bindings.length} bindings (${list(labels)}); name one with --as or pass --all`);
  } else {
    chosen = instance.bindings;
  }
  for (const binding of chosen) await unbindOne(client, instance, binding, io);
}

async function deleteCommand({ client, args, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  // Like a platform: the bindings go first, then the instance.
  for (const binding of instance.bindings) await unbindOne(client, instance, binding, io);
  io.err(`Deleting ${name} (${instance.service_name} ${instance.plan_name})…`);
  const reply = await client.request('DELETE', `${instancePath(instance.id)}?accepts_incomplete=true&${idQuery(instance)}`);
  if (reply.status === 410) return io.out(`${name} was already gone.`);
  if (![200, 202].includes(reply.status)) throw new CliError(`the broker refused to delete ${name}: ${describeBody(reply.body)}`);
  if (reply.status === 202) {
    const operation = typeof reply.body.operation === 'string' ? `?operation=${encodeURIComponent(reply.body.operation)}` : '';
    const done = await client.waitFor(`${instancePath(instance.id)}/last_operation${operation}`, (description) => io.err(`  ${description}`));
    if (done.state === 'failed') throw new CliError(`deleting ${name} failed: ${done.description}`);
  }
  io.out(`Deleted ${name}.`);
}

// dashboard

async function dashboard({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  const reply = await client.request('GET', instancePath(instance.id));
  if (reply.status === 404 && instance.state === 'provisioning')
    throw new CliError(`${name} is still being created; its dashboard opens once \`osb-docker list\` shows it ready`);
  expect(reply, [200], `fetching ${name}`);
  const url = reply.body.dashboard_url;
  if (!url) throw new CliError(`the broker gave no dashboard address for ${name}`);
  io.out(url);
  if (flags.open) await openInBrowser(url);
}

function openInBrowser(url: string): Promise<void> {
  const [command, ...args] = process.platform === 'darwin' ? ['open'] : process.platform === 'win32' ? ['cmd', '/c', 'start', '""'] : ['xdg-open'];
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args, url], { stdio: 'ignore', detached: true });
    const fail = (why: string) => reject(new CliError(`could not open a browser (${command} ${why}); the address is printed above`));
    // A launcher that is still running after a few seconds has handed the address to a browser.
    const settled = setTimeout(() => {
      child.unref();
      resolve();
    }, 3000);
    child.once('error', (error) => {
      clearTimeout(settled);
      fail((error as NodeJS.ErrnoException).code === 'ENOENT' ? 'is not installed' : error.message);
    });
    child.once('exit', (code) => {
      clearTimeout(settled);
      if (code === 0) resolve();
      else fail(`exited with ${code}`);
    });
  });
}

// env

async function env({ client, args, flags, io }: Run): Promise<void> {
  const [instances, offerings] = await Promise.all([client.instances(), client.catalog()]);
  const bound: BoundService[] = [];
  for (const requested of [...new Set(args)]) {
    const instance = resolve(instances, requested);
    const name = instance.name ?? instance.id;
    const ready = instance.bindings.filter((binding) => binding.state === 'ready');
    if (ready.length === 0) {
      const others = instance.bindings.map((binding) => `${bindingLabel(binding)} is ${binding.state}`);
      throw new CliError(
        `${name} has no ${others.length ? 'ready ' : ''}binding${others.length ? ` (${others.join(', ')})` : ''}; create one with \`osb-docker bind ${shellWord(name)}\``,
      );
    }
    const offering = offerings.find((candidate) => candidate.id === instance.service_id);
    for (const binding of ready) {
      const reply = await client.request('GET', bindingPath(instance.id, binding.id));
      expect(reply, [200], `fetching binding ${bindingLabel(binding)} of ${name}`);
      bound.push({
        offering: { name: offering?.name ?? instance.service_name, tags: offering?.tags ?? [] },
        plan: offering?.plans.find((plan) => plan.id === instance.plan_id)?.name ?? instance.plan_name,
        instance: { id: instance.id, name },
        binding: {
          id: binding.id,
          ...(binding.name ? { name: binding.name } : {}),
          credentials: reply.body.credentials ?? {},
          ...(typeof reply.body.syslog_drain_url === 'string' ? { syslog_drain_url: reply.body.syslog_drain_url } : {}),
        },
      });
    }
  }
  if (flags.serviceBindingRoot !== undefined) {
    const root = absolutePath(flags.serviceBindingRoot);
    for (const { folder, type, entries } of await writeServiceBindingRoot(root, bound)) io.err(`Wrote ${folder} (${type}): ${entries.join(', ')}`);
    return io.out(exportLine('SERVICE_BINDING_ROOT', root));
  }
  if (flags.k8sSecret) return io.out(k8sSecrets(bound));
  const services = buildVcapServices(bound);
  io.out(flags.json ? JSON.stringify(services, null, 2) : exportLine('VCAP_SERVICES', JSON.stringify(services)));
}
