/** One bound instance, as `osb-docker env` gathers it from the catalog, the listing and the binding fetch. */
export interface BoundService {
  offering: { name: string; tags?: string[] };
  plan: string;
  instance: { id: string; name: string };
  binding: { id: string; name?: string; credentials: Record<string, unknown>; syslog_drain_url?: string };
}

/** One entry of VCAP_SERVICES, with Cloud Foundry's fields (in the alphabetical order CF prints them). */
export interface VcapService {
  binding_guid: string;
  binding_name: string | null;
  credentials: Record<string, unknown>;
  instance_guid: string;
  instance_name: string;
  label: string;
  name: string;
  plan: string;
  provider: null;
  syslog_drain_url?: string;
  tags: string[];
  volume_mounts: unknown[];
}

export type VcapServices = Record<string, VcapService[]>;

/** The name `osb-docker bind <instance>` gives a binding when --as names none. */
export const defaultBindingName = (instanceName: string) => `${instanceName}-binding`;

/**
 * The `name` of each entry, which apps look services up by (cfenv's getService). Cloud Foundry sets it to the
 * binding name when the binding has one, else to the instance name. `osb-docker bind` names every binding,
 * `<instance>-binding` unless --as says otherwise: that default stands for "no name given" and keeps the instance
 * name; any other binding name is used as it is. Names must differ (cfenv keeps one service per name), so entries
 * that would still share one (a platform's unnamed bindings) get their binding names, and then their ids.
 */
export function serviceNames(bound: BoundService[]): string[] {
  const preferred = bound.map(({ instance, binding }) =>
    binding.name === undefined || binding.name === defaultBindingName(instance.name) ? instance.name : binding.name,
  );
  const byLabel = distinctOr(preferred, (index) => bound[index]!.binding.name ?? bound[index]!.binding.id);
  return distinctOr(byLabel, (index) => bound[index]!.binding.id);
}

/** Keeps the names that occur once; replaces every one that occurs more often with its fallback. */
function distinctOr(names: string[], fallback: (index: number) => string): string[] {
  const counts = new Map<string, number>();
  for (const name of names) counts.set(name, (counts.get(name) ?? 0) + 1);
  return names.map((name, index) => (counts.get(name)! > 1 ? fallback(index) : name));
}

/**
 * VCAP_SERVICES as Cloud Foundry builds it: keyed by offering name (the label), one entry per binding, in the
 * order given. `name` follows serviceNames; `syslog_drain_url` only where the binding has one.
 */
export function buildVcapServices(bound: BoundService[]): VcapServices {
  const services: VcapServices = {};
  const names = serviceNames(bound);
  for (const [index, { offering, plan, instance, binding }] of bound.entries()) {
    const entry: VcapService = {
      binding_guid: binding.id,
      binding_name: binding.name ?? null,
      credentials: binding.credentials,
      instance_guid: instance.id,
      instance_name: instance.name,
      label: offering.name,
      name: names[index]!,
      plan,
      provider: null,
      ...(binding.syslog_drain_url ? { syslog_drain_url: binding.syslog_drain_url } : {}),
      tags: [...(offering.tags ?? [])],
      volume_mounts: [],
    };
    (services[offering.name] ??= []).push(entry);
  }
  return services;
}

/** Quotes a value for any POSIX shell: inside single quotes nothing is special except the quote itself. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** `export NAME='value'`, for `eval "$(osb-docker env …)"`. */
export function exportLine(name: string, value: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`not a shell variable name: ${name}`);
  return `export ${name}=${shellQuote(value)}`;
}
