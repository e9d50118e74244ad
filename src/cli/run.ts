import type { Readable, Writable } from 'node:stream';
import type { ListedInstance } from '../api/listing.js';
import type { CommandSpec, Flags } from './args.js';
import type { BrokerClient } from './client.js';
import { CliError } from './errors.js';
import { didYouMean } from './names.js';
import type { ProgressSink } from './transfer.js';

/** What a command gets: the broker, its arguments and options, and the terminal. */
export interface Io extends ProgressSink {
  /** Results: tables, addresses, VCAP_SERVICES. */
  out(text: string): void;
  /** Progress and notes. */
  err(text: string): void;
  /** The process's stdout and stdin as byte streams, for a dump exported to `-` or imported from it. */
  stdout: Writable;
  stdin: Readable;
}

export interface Run {
  client: BrokerClient;
  args: string[];
  flags: Flags;
  io: Io;
  command: CommandSpec;
}

export const list = (values: string[]) => (values.length ? values.join(', ') : 'none');
export const instancePath = (id: string) => `/v2/service_instances/${encodeURIComponent(id)}`;

/** Finds an instance by its name (or id); unknown names list the names there are. */
export function resolve(instances: ListedInstance[], name: string): ListedInstance {
  const named = instances.filter((instance) => instance.name === name);
  if (named.length === 1) return named[0]!;
  if (named.length > 1) {
    throw new CliError(
      `${named.length} service instances are named "${name}" (created by another platform?); use an id: ${named.map((instance) => instance.id).join(', ')}`,
    );
  }
  const byId = instances.find((instance) => instance.id === name);
  if (byId) return byId;
  const names = instances.map((instance) => instance.name ?? instance.id);
  throw new CliError(
    names.length
      ? `no service instance named "${name}"${didYouMean(name, names)}; instances: ${list(names)}`
      : `no service instance named "${name}"; there are none yet (osb-docker create <offering> <plan> <name>)`,
  );
}
