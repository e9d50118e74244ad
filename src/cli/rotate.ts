import { randomUUID } from 'node:crypto';
import type { ListedBinding, ListedInstance } from '../api/listing.js';
import { describeBody, expect, PLATFORM } from './client.js';
import { bindingLabel, bindingPath, unbindOne } from './commands.js';
import { CliError } from './errors.js';
import { list, resolve, type Run } from './run.js';

/**
 * `osb-docker rotate <name> [--as <binding>]`: a successor of a binding (OSB 2.17 predecessor_binding_id) with
 * credentials of its own; both work until the old one is unbound, which --unbind-predecessor does once the new one
 * is ready. The successor keeps the old binding's name, so `osb-docker env` hands out the new credentials under it.
 */
export async function rotate({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = instance.name ?? instance.id;
  if (instance.state !== 'ready') throw new CliError(`${name} is ${instance.state}, not ready; its bindings cannot be rotated (see \`osb-docker list\`)`);
  const predecessor = chosenBinding(instance, flags.as);
  const label = bindingLabel(predecessor);

  const id = randomUUID();
  const path = bindingPath(instance.id, id);
  // The spec's rotation request: the predecessor's id; the broker takes the ids, app and parameters from it.
  const reply = await client.request('PUT', `${path}?accepts_incomplete=true`, {
    predecessor_binding_id: predecessor.id,
    context: { platform: PLATFORM, ...(predecessor.name ? { binding_name: predecessor.name } : {}) },
  });
  if (![200, 201, 202].includes(reply.status)) throw new CliError(`the broker refused to rotate ${label} of ${name}: ${describeBody(reply.body)}`);
  let result = reply.body;
  if (reply.status === 202) {
    const operation = typeof reply.body.operation === 'string' ? `?operation=${encodeURIComponent(reply.body.operation)}` : '';
    const done = await client.waitFor(`${path}/last_operation${operation}`, (description) => io.err(`  ${description}`));
    if (done.state !== 'succeeded')
      throw new CliError(`rotating ${label} of ${name} failed: ${done.description ?? 'the binding disappeared'}; ${label} still works`);
    const fetched = await client.request('GET', path);
    expect(fetched, [200], `fetching the new binding of ${name}`);
    result = fetched.body;
  }
  io.out(`Rotated ${label} of ${name}: new binding ${id} succeeds ${predecessor.id}.`);
  if (flags.showCredentials) {
    io.out(JSON.stringify({ credentials: result.credentials ?? {} }, null, 2));
  } else {
    io.out(`Credential fields: ${list(Object.keys(result.credentials ?? {}))}`);
  }
  if (flags.unbindPredecessor) {
    await unbindOne(client, instance, predecessor, io);
    io.err(`Only the new credentials work now: eval "$(osb-docker env ${name})" hands them to an app.`);
  } else {
    io.err(`The old and the new credentials both work until the old binding is unbound: osb-docker unbind ${name} --as ${predecessor.id}`);
  }
}

/** The binding --as names (by name or id), else the instance's only ready one. */
export function chosenBinding(instance: ListedInstance, as: string | undefined): ListedBinding {
  const name = instance.name ?? instance.id;
  const ready = instance.bindings.filter((binding) => binding.state === 'ready');
  if (as === undefined) {
    if (ready.length === 1) return ready[0]!;
    if (ready.length === 0) throw new CliError(`${name} has no ready binding to rotate; create one with \`osb-docker bind ${name}\``);
    throw new CliError(`${name} has ${ready.length} bindings (${list(ready.map(bindingLabel))}); name the one to rotate with --as`);
  }
  const byId = ready.find((binding) => binding.id === as);
  if (byId) return byId;
  const named = ready.filter((binding) => binding.name === as);
  if (named.length === 1) return named[0]!;
  if (named.length > 1) {
    // A rotation whose predecessor was not unbound yet: both carry the name.
    throw new CliError(`${named.length} ready bindings of ${name} are named "${as}"; give one by id: ${named.map((binding) => binding.id).join(', ')}`);
  }
  throw new CliError(`${name} has no ready binding named "${as}"; bindings: ${list(ready.map(bindingLabel))}`);
}
