import { readdirSync, readFileSync, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { Ajv, type AnySchemaObject, type ErrorObject, type ValidateFunction } from 'ajv';
import { PACKAGE_ROOT } from '../config.js';
import type { MaintenanceInfo, Plan, ServiceOffering } from '../osb/types.js';
import { SCRIPTS, type BackupSpec, type ContainerSpec, type CredentialsTemplate, type Limits, type ServiceDefinition, type TlsSpec } from './definition.js';
import { compileSchema } from './parameters.js';
import { loadDashboardLinks, loadStats } from './stats.js';

export class CatalogError extends Error {}

/** The JSON-Schema every service.json must satisfy; it describes every field and its rule. */
const SCHEMA_FILE = path.join(PACKAGE_ROOT, 'catalog', 'service.schema.json');
const PLAN_FIELDS_NOT_SENT = ['limits'];

/** A service.json that passed the schema, with the schema's defaults filled in. */
interface ServiceJson {
  offering: Omit<ServiceOffering, 'plans'> & { plans: Array<Record<string, unknown> & { id: string; name: string; description: string; limits: PlanLimits }> };
  maintenance_info: MaintenanceInfo;
  parameters: Record<string, unknown>;
  binding_parameters: Record<string, unknown>;
  updatable_parameters: string[];
  credentials: CredentialsTemplate;
  syslog_drain_url?: string;
  backups?: { supported: boolean; format?: string; contains?: string; compressed?: boolean; reason?: string };
  tls?: { dir: string; uid: number; gid: number; port: string; credentials: CredentialsTemplate; credentials_require_tls: CredentialsTemplate };
  stats?: Parameters<typeof loadStats>[0];
  dashboard_links?: Parameters<typeof loadDashboardLinks>[0];
  container: {
    port: number;
    extra_ports: Record<string, number>;
    data_path: string;
    exec_user?: string;
    admin_username: string;
    cap_drop: string[];
    cap_add: string[];
    stop_timeout_seconds: number;
    ready_timeout_seconds: number;
  };
}

interface PlanLimits {
  memory_mb: number;
  cpus: number;
  pids: number;
  disk_mb?: number;
}

/** Reads every folder of the catalog directory that holds a service.json. Stops at the first bad field, naming it. */
export function loadCatalog(catalogDir: string, imagePrefix: string): ServiceDefinition[] {
  if (!existsSync(catalogDir)) throw new CatalogError(`catalog directory ${catalogDir} does not exist`);
  const folders = readdirSync(catalogDir)
    .map((entry) => path.join(catalogDir, entry))
    .filter((folder) => statSync(folder).isDirectory() && existsSync(path.join(folder, 'service.json')))
    .sort();
  if (folders.length === 0) throw new CatalogError(`catalog directory ${catalogDir} holds no <name>/service.json`);
  const definitions = folders.map((folder) => loadDefinition(folder, imagePrefix));
  checkUnique(definitions);
  return definitions;
}

let validator: { validate: ValidateFunction; schema: AnySchemaObject } | undefined;

/** The compiled service.json schema; compiled once per process. Defaults are filled into the validated data. */
function serviceValidator(): { validate: ValidateFunction; schema: AnySchemaObject } {
  if (!validator) {
    let schema: AnySchemaObject;
    try {
      schema = JSON.parse(readFileSync(SCHEMA_FILE, 'utf8')) as AnySchemaObject;
    } catch (error) {
      throw new CatalogError(`${SCHEMA_FILE}: cannot be read (${(error as Error).message})`);
    }
    const ajv = new Ajv({ allErrors: false, verbose: true, useDefaults: true, allowUnionTypes: true });
    // The problem reported for a field, after its name (editors that know the keyword show it too).
    ajv.addKeyword({ keyword: 'errorMessage', schemaType: 'string' });
    validator = { validate: ajv.compile(schema), schema };
  }
  return validator;
}

/** The field an error is about, in the notation of the catalog's documentation: `offering.plans[0].limits.memory_mb`. */
function fieldName(data: unknown, instancePath: string, ...more: string[]): string {
  const segments = [
    ...(instancePath === '' ? [] : instancePath.slice(1).split('/').map((segment) => segment.replaceAll('~1', '/').replaceAll('~0', '~'))),
    ...more,
  ];
  let field = '';
  let value = data;
  for (const segment of segments) {
    if (Array.isArray(value) && /^\d+$/.test(segment)) field += `[${segment}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(segment)) field += field === '' ? segment : `.${segment}`;
    else field += `[${JSON.stringify(segment)}]`;
    value = typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[segment] : undefined;
  }
  return field || '(top level)';
}

/** A schema reached through a local `$ref` (`#/definitions/...`), or the schema itself. */
function resolveRef(root: AnySchemaObject, schema: unknown): AnySchemaObject | undefined {
  if (typeof schema !== 'object' || schema === null) return undefined;
  const ref: unknown = (schema as AnySchemaObject).$ref;
  if (typeof ref !== 'string' || !ref.startsWith('#/')) return schema;
  let target: unknown = root;
  for (const part of ref.slice(2).split('/')) target = (target as Record<string, unknown> | undefined)?.[part];
  return resolveRef(root, target);
}

/** `<file>: <field> <problem>` for an Ajv error, the problem taken from the schema's `errorMessage`. */
function describeSchemaError(file: string, data: unknown, error: ErrorObject, root: AnySchemaObject): string {
  if (error.keyword === 'required') {
    const missing = (error.params as { missingProperty: string }).missingProperty;
    const property = resolveRef(root, (error.parentSchema?.properties as Record<string, unknown> | undefined)?.[missing]);
    const problem = typeof property?.errorMessage === 'string' ? property.errorMessage : 'is required';
    return `${file}: ${fieldName(data, error.instancePath, missing)} ${problem} (it is missing)`;
  }
  const problem = typeof error.parentSchema?.errorMessage === 'string' ? error.parentSchema.errorMessage : (error.message ?? 'is invalid');
  if (error.propertyName !== undefined) return `${file}: ${fieldName(data, error.instancePath, error.propertyName)} ${problem}`;
  const value = error.data;
  const shown = value === null || ['string', 'number', 'boolean'].includes(typeof value) ? JSON.stringify(value) : undefined;
  const got = shown !== undefined && shown.length <= 80 ? ` (got ${shown})` : '';
  return `${file}: ${fieldName(data, error.instancePath)} ${problem}${got}`;
}

function loadDefinition(folder: string, imagePrefix: string): ServiceDefinition {
  const file = path.join(folder, 'service.json');
  const fail = (field: string, problem: string): never => {
    throw new CatalogError(`${file}: ${field} ${problem}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new CatalogError(`${file}: not valid JSON (${(error as Error).message})`);
  }
  const { validate, schema } = serviceValidator();
  if (!validate(raw)) throw new CatalogError(describeSchemaError(file, raw, validate.errors![0]!, schema));
  const root = raw as ServiceJson;
  if (!existsSync(path.join(folder, 'Dockerfile'))) throw new CatalogError(`${folder}: Dockerfile is missing`);

  const maintenanceInfo: MaintenanceInfo = {
    version: root.maintenance_info.version,
    ...(root.maintenance_info.description !== undefined ? { description: root.maintenance_info.description } : {}),
  };

  const parameterSchema = root.parameters;
  const bindingParameterSchema = root.binding_parameters;
  for (const [parameters, field] of [[parameterSchema, 'parameters'], [bindingParameterSchema, 'binding_parameters']] as const) {
    const text = JSON.stringify(parameters);
    if (text.length >= 64 * 1024) fail(field, 'must be smaller than 64 kB');
    if (/"\$ref"\s*:\s*"(?!#)/.test(text)) fail(field, 'must not use an external $ref');
    try {
      compileSchema(parameters);
    } catch (error) {
      fail(field, `is not a valid JSON-Schema: ${(error as Error).message}`);
    }
  }
  const parameterNames = Object.keys((parameterSchema.properties as Record<string, unknown> | undefined) ?? {});
  const updatableParameters = root.updatable_parameters;
  for (const name of updatableParameters) {
    if (!parameterNames.includes(name)) fail('updatable_parameters', `names "${name}", which parameters.properties does not define`);
  }

  const offering = buildOffering(root.offering, maintenanceInfo, parameterSchema, bindingParameterSchema);
  const limits = new Map<string, Limits>();
  for (const plan of root.offering.plans) {
    const diskMb = plan.limits.disk_mb;
    limits.set(plan.id, { memoryMb: plan.limits.memory_mb, cpus: plan.limits.cpus, pids: plan.limits.pids, ...(diskMb ? { diskMb } : {}) });
  }

  const syslogDrainUrl = root.syslog_drain_url;
  const requires = root.offering.requires ?? [];
  if (syslogDrainUrl !== undefined && !requires.includes('syslog_drain')) {
    fail('syslog_drain_url', 'needs offering.requires to contain "syslog_drain"');
  }
  if (requires.includes('syslog_drain') && syslogDrainUrl === undefined) fail('syslog_drain_url', 'is required by offering.requires "syslog_drain"');

  const scriptsDir = path.join(folder, 'scripts');
  const scripts = new Set(existsSync(scriptsDir) ? readdirSync(scriptsDir).filter((name) => (SCRIPTS as readonly string[]).includes(name)) : []);
  if (!scripts.has('ready')) throw new CatalogError(`${folder}: scripts/ready is missing (the broker polls it until the service accepts connections)`);
  const backups = loadBackups(root.backups, scripts, folder, fail);
  // A rotation is a new per-binding user while the old one keeps working: without a bind script there is none to make.
  root.offering.plans.forEach((plan, index) => {
    if (plan.binding_rotatable === true && !scripts.has('bind')) {
      fail(`offering.plans[${index}].binding_rotatable`, 'needs scripts/bind: a rotated binding gets credentials of its own, which the bind script makes');
    }
  });

  const container = root.container;
  const containerSpec: ContainerSpec = {
    port: container.port,
    extraPorts: container.extra_ports,
    dataPath: container.data_path,
    execUser: container.exec_user,
    adminUsername: container.admin_username,
    capDrop: container.cap_drop,
    capAdd: container.cap_add,
    stopTimeoutSeconds: container.stop_timeout_seconds,
    readyTimeoutSeconds: container.ready_timeout_seconds,
  };

  return {
    folder,
    offering,
    maintenanceInfo,
    limits,
    parameterSchema,
    bindingParameterSchema,
    updatableParameters,
    container: containerSpec,
    credentials: root.credentials,
    syslogDrainUrl,
    tls: loadTls(root, scripts, folder, fail),
    stats: loadStats(root.stats, scripts, folder, fail),
    dashboardLinks: loadDashboardLinks(root.dashboard_links, root.container.extra_ports, fail),
    scripts,
    backups,
    imageRepository: `${imagePrefix}${offering.name}`,
  };
}

/**
 * The `backups` declaration, checked against the scripts: an offering with backups has both scripts, and says what a
 * backup holds and in which format; one without says why, and has neither script (a script that never runs is a mistake).
 */
function loadBackups(
  raw: ServiceJson['backups'],
  scripts: Set<string>,
  folder: string,
  fail: (field: string, problem: string) => never,
): BackupSpec {
  const present = ['backup', 'restore'].filter((name) => scripts.has(name));
  if (raw?.supported) {
    for (const [name, does] of [
      ['backup', 'writes a dump of an instance to stdout'],
      ['restore', 'reads a dump from stdin into an instance'],
    ] as const) {
      if (!scripts.has(name)) throw new CatalogError(`${folder}: scripts/${name} is missing (backups.supported is true: it ${does})`);
    }
    if (raw.format === undefined) fail('backups.format', 'is required when backups.supported is true: the format of the dump scripts/backup writes');
    if (raw.contains === undefined) fail('backups.contains', 'is required when backups.supported is true: what a backup holds and what it leaves out');
    return { supported: true, format: raw.format, contains: raw.contains, compressed: raw.compressed ?? false };
  }
  const scriptsNamed = present.map((name) => `scripts/${name}`).join(' and ');
  if (raw === undefined) {
    if (present.length > 0) fail('backups', `is missing, but the folder has ${scriptsNamed}: declare { "supported": true, "format": …, "contains": … }`);
    return { supported: false, contains: 'nothing', compressed: false, reason: 'the offering declares no backups' };
  }
  if (present.length > 0) fail('backups.supported', `must be true when the folder has ${scriptsNamed} (got false)`);
  if (raw.reason === undefined) fail('backups.reason', 'is required when backups.supported is false: why the offering has no backups');
  return { supported: false, contains: 'nothing', compressed: false, reason: raw.reason };
}

/** The `tls` declaration, checked against the folder: a reload-tls script, a port that exists, files outside the volume. */
function loadTls(root: ServiceJson, scripts: Set<string>, folder: string, fail: (field: string, problem: string) => never): TlsSpec | undefined {
  const raw = root.tls;
  if (!raw) {
    if (scripts.has('reload-tls')) fail('tls', 'is missing, but the folder has scripts/reload-tls: declare where the TLS files go');
    return undefined;
  }
  if (!scripts.has('reload-tls')) throw new CatalogError(`${folder}: scripts/reload-tls is missing (tls is declared: it makes the engine read renewed files)`);
  if (raw.port !== 'main' && !(raw.port in root.container.extra_ports)) fail('tls.port', `names "${raw.port}", which is neither "main" nor a name of container.extra_ports`);
  const dir = raw.dir.replace(/\/+$/, '');
  const data = root.container.data_path.replace(/\/+$/, '');
  if (dir === data || dir.startsWith(`${data}/`)) fail('tls.dir', `must be outside container.data_path (${data}): the key is never written to the volume`);
  return { dir, uid: raw.uid, gid: raw.gid, port: raw.port, credentials: raw.credentials, requireTlsCredentials: raw.credentials_require_tls };
}

/** The offering as platforms see it: plans without their limits, with the maintenance info and parameter schemas. */
function buildOffering(
  raw: ServiceJson['offering'],
  maintenanceInfo: MaintenanceInfo,
  parameterSchema: Record<string, unknown>,
  bindingParameterSchema: Record<string, unknown>,
): ServiceOffering {
  return {
    ...raw,
    plans: raw.plans.map((plan): Plan => {
      const sent = Object.fromEntries(Object.entries(plan).filter(([key]) => !PLAN_FIELDS_NOT_SENT.includes(key)));
      // The one limit platforms see: what a plan's volume is meant to hold, for people choosing a plan.
      const diskMb = plan.limits.disk_mb;
      if (diskMb) sent.metadata = { ...(plan.metadata as Record<string, unknown> | undefined), disk_mb: diskMb };
      return {
        ...sent,
        id: plan.id,
        name: plan.name,
        description: plan.description,
        maintenance_info: maintenanceInfo,
        schemas: {
          service_instance: { create: { parameters: parameterSchema }, update: { parameters: parameterSchema } },
          service_binding: { create: { parameters: bindingParameterSchema } },
        },
      };
    }),
  };
}

function checkUnique(definitions: ServiceDefinition[]): void {
  const seen = new Map<string, string>();
  const claim = (key: string, what: string, folder: string) => {
    const other = seen.get(key);
    if (other) throw new CatalogError(`${path.join(folder, 'service.json')}: ${what} is also used in ${other}`);
    seen.set(key, path.join(folder, 'service.json'));
  };
  for (const definition of definitions) {
    claim(`id:${definition.offering.id}`, `offering.id ${definition.offering.id}`, definition.folder);
    claim(`name:${definition.offering.name}`, `offering.name ${definition.offering.name}`, definition.folder);
    const planNames = new Set<string>();
    definition.offering.plans.forEach((plan, index) => {
      claim(`id:${plan.id}`, `offering.plans[${index}].id ${plan.id}`, definition.folder);
      if (planNames.has(plan.name)) {
        throw new CatalogError(`${path.join(definition.folder, 'service.json')}: offering.plans[${index}].name "${plan.name}" is used twice`);
      }
      planNames.add(plan.name);
    });
  }
}
