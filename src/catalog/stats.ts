import type { DashboardLinkSpec, StatSpec } from './definition.js';

type Fail = (field: string, problem: string) => never;

/** The largest stats output read; a few numbers fit in far less, so more is a script that prints something else. */
export const STATS_OUTPUT_LIMIT = 16 * 1024;

/**
 * The `stats` declaration, checked against the folder: scripts/stats exists exactly when stats are declared, names are
 * unique, and each `of` names another stat of the list.
 */
export function loadStats(raw: StatSpec[] | undefined, scripts: Set<string>, folder: string, fail: Fail): StatSpec[] | undefined {
  if (raw === undefined) {
    if (scripts.has('stats')) fail('stats', 'is missing, but the folder has scripts/stats: declare the numbers it prints');
    return undefined;
  }
  if (!scripts.has('stats')) fail('stats', `is declared, but ${folder}/scripts/stats is missing (it prints the numbers)`);
  const names = new Set<string>();
  raw.forEach((stat, index) => {
    if (names.has(stat.name)) fail(`stats[${index}].name`, `"${stat.name}" is used twice`);
    names.add(stat.name);
  });
  raw.forEach((stat, index) => {
    if (stat.of !== undefined && (stat.of === stat.name || !names.has(stat.of))) fail(`stats[${index}].of`, `names "${stat.of}", which is no other stat of the list`);
  });
  return raw.map(({ name, label, unit, of }) => ({ name, label, unit, ...(of !== undefined ? { of } : {}) }));
}

const PLACEHOLDER = /\{([^{}]*)\}/g;

/** The `dashboard_links` declaration: only {host}, {port} and {ports.<name>} of a declared extra port. */
export function loadDashboardLinks(
  raw: Array<Omit<DashboardLinkSpec, 'tls'> & { tls?: boolean }> | undefined,
  extraPorts: Record<string, number>,
  fail: Fail,
): DashboardLinkSpec[] | undefined {
  if (raw === undefined) return undefined;
  return raw.map((link, index) => {
    for (const [, name] of link.url.matchAll(PLACEHOLDER)) {
      const known = name === 'host' || name === 'port' || (name!.startsWith('ports.') && name!.slice(6) in extraPorts);
      if (!known) fail(`dashboard_links[${index}].url`, `has the placeholder {${name}}: only {host}, {port} and {ports.<a name of container.extra_ports>} are allowed`);
    }
    return { label: link.label, url: link.url, ...(link.note !== undefined ? { note: link.note } : {}), tls: link.tls ?? false };
  });
}

/** A link's URL with the instance's host and published ports; undefined when a port it names is not published. */
export function renderLink(url: string, host: string, port: number | undefined, extraPorts: Record<string, number | undefined>): string | undefined {
  let missing = false;
  const rendered = url.replace(PLACEHOLDER, (_match, name: string) => {
    const value = name === 'host' ? host : name === 'port' ? port : extraPorts[name.slice(6)];
    if (value === undefined) missing = true;
    return String(value ?? '');
  });
  return missing ? undefined : rendered;
}

export class StatsOutputError extends Error {}

/**
 * The numbers of one stats run, by declared name. The output must be one JSON object; a declared stat that is missing,
 * null or not a finite number is left out (the engine could not say), keys nobody declared are ignored.
 */
export function parseStatsOutput(text: string, specs: StatSpec[]): Record<string, number> {
  if (text.length > STATS_OUTPUT_LIMIT) throw new StatsOutputError(`the stats script printed more than ${STATS_OUTPUT_LIMIT} bytes`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new StatsOutputError('the stats script printed something other than one JSON object');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new StatsOutputError('the stats script printed something other than one JSON object');
  const values: Record<string, number> = {};
  for (const { name } of specs) {
    const value = (parsed as Record<string, unknown>)[name];
    if (typeof value === 'number' && Number.isFinite(value)) values[name] = value;
  }
  return values;
}
