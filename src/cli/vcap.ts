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

/**
 * VCAP_SERVICES as Cloud Foundry builds it: keyed by offering name (the label), one entry per binding, in the
 * order given. `name` is the instance name (see the README for why not the binding name); `syslog_drain_url`
 * only where the binding has one.
 */
export function buildVcapServices(bound: BoundService[]): VcapServices {
  const services: VcapServices = {};
  for (const { offering, plan, instance, binding } of bound) {
    const entry: VcapService = {
      binding_guid: binding.id,
      binding_name: binding.name ?? null,
      credentials: binding.credentials,
      instance_guid: instance.id,
      instance_name: instance.name,
      label: offering.name,
      name: instance.name,
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
