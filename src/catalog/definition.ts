import type { MaintenanceInfo, Plan, ServiceOffering } from '../osb/types.js';

/** Resource limits of a plan, applied to the instance's container. */
export interface Limits {
  memoryMb: number;
  cpus: number;
  pids: number;
  /** Soft limit of the data volume: usage over it is reported, never enforced (Docker's local volumes have no quota). */
  diskMb?: number;
}

/** How the broker runs one engine's containers; read from the `container` block of service.json. */
export interface ContainerSpec {
  port: number;
  /** Further ports to publish, by name (`{ports.<name>}` in templates). */
  extraPorts: Record<string, number>;
  dataPath: string;
  execUser?: string;
  adminUsername: string;
  capDrop: string[];
  capAdd: string[];
  stopTimeoutSeconds: number;
  readyTimeoutSeconds: number;
}

/** Whether an offering's instances can be backed up and restored, and what a backup holds (service.json `backups`). */
export interface BackupSpec {
  /** True: scripts/backup writes a dump of an instance to stdout, scripts/restore reads one from stdin. */
  supported: boolean;
  /** What a backup holds and what it leaves out, for people (README, API); "nothing" when unsupported. */
  contains: string;
  /** The dump's format, for people (supported only). */
  format?: string;
  /** The dump is compressed already (pg_dump -Fc): the broker seals it without compressing it again. */
  compressed: boolean;
  /** Why the offering has no backups (unsupported only). */
  reason?: string;
}

/**
 * The engine serves TLS with certificates the broker issues (service.json `tls`): where the files land in the
 * container, who owns them, which port serves TLS, and the credential fields that replace others under require_tls.
 */
export interface TlsSpec {
  dir: string;
  uid: number;
  gid: number;
  /** "main" (container.port) or a name of container.extra_ports. */
  port: string;
  /** Fields added to the credentials when the broker delivers TLS to the instance. */
  credentials: CredentialsTemplate;
  /** Fields that replace their namesakes when the instance's require_tls parameter is true. */
  requireTlsCredentials: CredentialsTemplate;
}

export type StatUnit = 'count' | 'bytes' | 'seconds' | 'per_second' | 'ratio';

/** One number an offering's stats script reports: its key, what people call it, its unit, and the stat that limits it. */
export interface StatSpec {
  name: string;
  label: string;
  unit: StatUnit;
  of?: string;
}

/** A link on the dashboard's Engine card; the URL is a template of {host}, {port} and {ports.<name>}. */
export interface DashboardLinkSpec {
  label: string;
  url: string;
  note?: string;
  /** Only for instances that serve TLS with the broker's certificate. */
  tls: boolean;
}

/** One catalog folder, validated: the OSB offering plus what the broker needs to run it. */
export interface ServiceDefinition {
  folder: string;
  offering: ServiceOffering;
  maintenanceInfo: MaintenanceInfo;
  limits: Map<string, Limits>;
  parameterSchema: Record<string, unknown>;
  bindingParameterSchema: Record<string, unknown>;
  updatableParameters: string[];
  container: ContainerSpec;
  credentials: CredentialsTemplate;
  /** Template of the binding's syslog_drain_url, for offerings that require syslog_drain. */
  syslogDrainUrl?: string;
  /** Scripts the image has under /osb/; any but `ready` may be missing, which makes that step a no-op. */
  scripts: Set<string>;
  /** Backups: with `supported`, `scripts` has `backup` and `restore`. */
  backups: BackupSpec;
  /** TLS with the broker's certificates; with it, `scripts` has `reload-tls`. */
  tls?: TlsSpec;
  /** The numbers scripts/stats prints (service.json `stats`); absent or empty without the script. */
  stats?: StatSpec[];
  /** Links the dashboard's Engine card shows (service.json `dashboard_links`). */
  dashboardLinks?: DashboardLinkSpec[];
  /** Image repository without tag; the tag is the maintenance version. */
  imageRepository: string;
}

/** Each credential field: a template string, a list of them, or an object of further fields (e.g. mysql2's `ssl`). */
export type CredentialTemplate = string | string[] | { [field: string]: CredentialTemplate };
export type CredentialsTemplate = Record<string, CredentialTemplate>;

export const SCRIPTS = ['ready', 'setup', 'check', 'bind', 'unbind', 'configure', 'backup', 'restore', 'reload-tls', 'stats'] as const;

export const imageTag = (definition: ServiceDefinition) =>
  `${definition.imageRepository}:${definition.maintenanceInfo.version}`;

export function findPlan(definition: ServiceDefinition, planId: string): Plan | undefined {
  return definition.offering.plans.find((plan) => plan.id === planId);
}

export function planUpdateable(definition: ServiceDefinition, plan: Plan): boolean {
  return plan.plan_updateable ?? definition.offering.plan_updateable ?? false;
}

/** The offering's display name from its catalog metadata, else its name. */
export function displayName(definition: ServiceDefinition): string {
  const name = definition.offering.metadata?.displayName;
  return typeof name === 'string' && name ? name : definition.offering.name;
}
