import { readdirSync, readFileSync, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Plan, ServiceOffering } from '../osb/types.js';
import { SCRIPTS, type ContainerSpec, type CredentialsTemplate, type Limits, type ServiceDefinition } from './definition.js';
import { compileSchema } from './parameters.js';

export class CatalogError extends Error {}

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NAME = /^[a-z0-9][a-z0-9-]*$/;
const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/;
const PLAN_FIELDS_NOT_SENT = ['limits'];

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

class Reader {
  constructor(readonly file: string) {}

  fail(field: string, problem: string): never {
    throw new CatalogError(`${this.file}: ${field} ${problem}`);
  }
  object(value: unknown, field: string): Record<string, unknown> {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) this.fail(field, 'must be an object');
    return value as Record<string, unknown>;
  }
  string(value: unknown, field: string, pattern?: RegExp, hint?: string): string {
    if (typeof value !== 'string' || value.trim() === '') this.fail(field, 'must be a non-empty string');
    if (pattern && !pattern.test(value)) this.fail(field, `must be ${hint ?? `like ${pattern}`} (got "${value}")`);
    return value;
  }
  optionalBoolean(value: unknown, field: string): boolean | undefined {
    if (value !== undefined && typeof value !== 'boolean') this.fail(field, 'must be true or false');
    return value as boolean | undefined;
  }
  number(value: unknown, field: string, options: { integer?: boolean; min: number; max?: number }): number {
    const ok = typeof value === 'number' && Number.isFinite(value) && (!options.integer || Number.isInteger(value));
    if (!ok || value < options.min || (options.max !== undefined && value > options.max)) {
      this.fail(field, `must be ${options.integer ? 'an integer' : 'a number'} >= ${options.min}${options.max !== undefined ? ` and <= ${options.max}` : ''}`);
    }
    return value;
  }
  strings(value: unknown, field: string): string[] {
    if (!Array.isArray(value) || value.some((item) => typeof item !== 'string' || item === '')) {
      this.fail(field, 'must be an array of non-empty strings');
    }
    return value as string[];
  }
}

function loadDefinition(folder: string, imagePrefix: string): ServiceDefinition {
  const file = path.join(folder, 'service.json');
  const read = new Reader(file);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new CatalogError(`${file}: not valid JSON (${(error as Error).message})`);
  }
  const root = read.object(raw, '(top level)');
  if (!existsSync(path.join(folder, 'Dockerfile'))) throw new CatalogError(`${folder}: Dockerfile is missing`);

  const maintenance = read.object(root.maintenance_info, 'maintenance_info');
  const maintenanceInfo = {
    version: read.string(maintenance.version, 'maintenance_info.version', SEMVER, 'a SemVer 2.0 version such as 1.2.3'),
    ...(maintenance.description !== undefined
      ? { description: read.string(maintenance.description, 'maintenance_info.description') }
      : {}),
  };

  // Without a schema, an offering takes no parameters at all.
  const noParameters = () => ({ $schema: 'http://json-schema.org/draft-07/schema#', type: 'object', additionalProperties: false, properties: {} });
  const parameterSchema = read.object(root.parameters ?? noParameters(), 'parameters');
  const bindingParameterSchema = read.object(root.binding_parameters ?? noParameters(), 'binding_parameters');
  for (const [schema, field] of [[parameterSchema, 'parameters'], [bindingParameterSchema, 'binding_parameters']] as const) {
    if (typeof schema.$schema !== 'string') read.fail(`${field}.$schema`, 'must name the JSON-Schema draft');
    if (JSON.stringify(schema).length >= 64 * 1024) read.fail(field, 'must be smaller than 64 kB');
    if (/"\$ref"\s*:\s*"(?!#)/.test(JSON.stringify(schema))) read.fail(field, 'must not use an external $ref');
    try {
      compileSchema(schema);
    } catch (error) {
      read.fail(field, `is not a valid JSON-Schema: ${(error as Error).message}`);
    }
  }
  const parameterNames = Object.keys((parameterSchema.properties as Record<string, unknown> | undefined) ?? {});
  const updatableParameters = read.strings(root.updatable_parameters ?? [], 'updatable_parameters');
  for (const name of updatableParameters) {
    if (!parameterNames.includes(name)) read.fail('updatable_parameters', `names "${name}", which parameters.properties does not define`);
  }

  const offering = readOffering(read, read.object(root.offering, 'offering'), maintenanceInfo, parameterSchema, bindingParameterSchema);
  const limits = new Map<string, Limits>();
  (root.offering as { plans: Record<string, unknown>[] }).plans.forEach((plan, index) => {
    const field = `offering.plans[${index}].limits`;
    const limit = read.object(plan.limits, field);
    limits.set(plan.id as string, {
      memoryMb: read.number(limit.memory_mb, `${field}.memory_mb`, { integer: true, min: 16 }),
      cpus: read.number(limit.cpus, `${field}.cpus`, { min: 0.01, max: 64 }),
      pids: read.number(limit.pids, `${field}.pids`, { integer: true, min: 16 }),
    });
  });

  const credentials = read.object(root.credentials ?? {}, 'credentials');
  for (const [key, value] of Object.entries(credentials)) {
    if (Array.isArray(value)) read.strings(value, `credentials.${key}`);
    else read.string(value, `credentials.${key}`);
  }
  const syslogDrainUrl = root.syslog_drain_url === undefined ? undefined : read.string(root.syslog_drain_url, 'syslog_drain_url');
  const requires = (root.offering as { requires?: string[] }).requires ?? [];
  if (syslogDrainUrl !== undefined && !requires.includes('syslog_drain')) {
    read.fail('syslog_drain_url', 'needs offering.requires to contain "syslog_drain"');
  }
  if (requires.includes('syslog_drain') && syslogDrainUrl === undefined) read.fail('syslog_drain_url', 'is required by offering.requires "syslog_drain"');

  const scriptsDir = path.join(folder, 'scripts');
  const scripts = new Set(existsSync(scriptsDir) ? readdirSync(scriptsDir).filter((name) => (SCRIPTS as readonly string[]).includes(name)) : []);
  if (!scripts.has('ready')) throw new CatalogError(`${folder}: scripts/ready is missing (the broker polls it until the service accepts connections)`);

  return {
    folder,
    offering,
    maintenanceInfo,
    limits,
    parameterSchema,
    bindingParameterSchema,
    updatableParameters,
    container: readContainer(read, read.object(root.container, 'container')),
    credentials: credentials as CredentialsTemplate,
    syslogDrainUrl,
    scripts,
    imageRepository: `${imagePrefix}${offering.name}`,
  };
}

function readOffering(
  read: Reader,
  raw: Record<string, unknown>,
  maintenanceInfo: ServiceDefinition['maintenanceInfo'],
  parameterSchema: Record<string, unknown>,
  bindingParameterSchema: Record<string, unknown>,
): ServiceOffering {
  const plansRaw = raw.plans;
  if (!Array.isArray(plansRaw) || plansRaw.length === 0) read.fail('offering.plans', 'must list at least one plan');
  const offering: ServiceOffering = {
    ...raw,
    id: read.string(raw.id, 'offering.id', GUID, 'a GUID'),
    name: read.string(raw.name, 'offering.name', NAME, 'lowercase a-z, 0-9 and "-"'),
    description: read.string(raw.description, 'offering.description'),
    bindable: read.optionalBoolean(raw.bindable, 'offering.bindable') ?? read.fail('offering.bindable', 'must be true or false'),
    plans: [],
  };
  if (raw.tags !== undefined) read.strings(raw.tags, 'offering.tags');
  if (raw.requires !== undefined) read.strings(raw.requires, 'offering.requires');
  for (const flag of ['instances_retrievable', 'bindings_retrievable', 'allow_context_updates', 'plan_updateable']) {
    read.optionalBoolean(raw[flag], `offering.${flag}`);
  }
  offering.plans = plansRaw.map((planRaw: unknown, index: number): Plan => {
    const field = `offering.plans[${index}]`;
    const plan = read.object(planRaw, field);
    const maximumPollingDuration = plan.maximum_polling_duration;
    if (maximumPollingDuration !== undefined) read.number(maximumPollingDuration, `${field}.maximum_polling_duration`, { integer: true, min: 1 });
    read.optionalBoolean(plan.plan_updateable, `${field}.plan_updateable`);
    read.optionalBoolean(plan.free, `${field}.free`);
    const sent = Object.fromEntries(Object.entries(plan).filter(([key]) => !PLAN_FIELDS_NOT_SENT.includes(key)));
    return {
      ...sent,
      id: read.string(plan.id, `${field}.id`, GUID, 'a GUID'),
      name: read.string(plan.name, `${field}.name`, NAME, 'lowercase a-z, 0-9 and "-"'),
      description: read.string(plan.description, `${field}.description`),
      maintenance_info: maintenanceInfo,
      schemas: {
        service_instance: { create: { parameters: parameterSchema }, update: { parameters: parameterSchema } },
        service_binding: { create: { parameters: bindingParameterSchema } },
      },
    };
  });
  return offering;
}

function readContainer(read: Reader, raw: Record<string, unknown>): ContainerSpec {
  const dataPath = read.string(raw.data_path, 'container.data_path', /^\//, 'an absolute path');
  const extraPorts = read.object(raw.extra_ports ?? {}, 'container.extra_ports');
  for (const [name, port] of Object.entries(extraPorts)) {
    if (!/^[a-z][a-z0-9_]*$/.test(name)) read.fail(`container.extra_ports.${name}`, 'must be named with lowercase a-z, 0-9 and "_"');
    read.number(port, `container.extra_ports.${name}`, { integer: true, min: 1, max: 65535 });
  }
  return {
    port: read.number(raw.port, 'container.port', { integer: true, min: 1, max: 65535 }),
    extraPorts: extraPorts as Record<string, number>,
    dataPath,
    execUser: raw.exec_user === undefined ? undefined : read.string(raw.exec_user, 'container.exec_user'),
    adminUsername: read.string(raw.admin_username ?? 'osb_admin', 'container.admin_username', /^[a-z_][a-z0-9_]*$/, 'lowercase a-z, 0-9 and "_"'),
    capDrop: read.strings(raw.cap_drop ?? [], 'container.cap_drop'),
    capAdd: read.strings(raw.cap_add ?? [], 'container.cap_add'),
    stopTimeoutSeconds: read.number(raw.stop_timeout_seconds ?? 10, 'container.stop_timeout_seconds', { integer: true, min: 0, max: 600 }),
    readyTimeoutSeconds: read.number(raw.ready_timeout_seconds ?? 120, 'container.ready_timeout_seconds', { integer: true, min: 1, max: 3600 }),
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
