import test from 'ava';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { CatalogError, loadCatalog } from '../../src/catalog/load.js';
import type { StatSpec } from '../../src/catalog/definition.js';
import { parseStatsOutput, renderLink, StatsOutputError, STATS_OUTPUT_LIMIT } from '../../src/catalog/stats.js';
import { EngineStats } from '../../src/broker/engine-stats.js';
import { createLogger } from '../../src/log.js';
import { catalogCopy } from '../helpers/catalog.js';
import type { EngineStatsRecord, InstanceRecord } from '../../src/store/records.js';

const SPECS: StatSpec[] = [
  { name: 'connections', label: 'Connections', unit: 'count', of: 'max_connections' },
  { name: 'max_connections', label: 'Connection limit', unit: 'count' },
  { name: 'hit_ratio', label: 'Hit ratio', unit: 'ratio' },
];

test('stats output: declared numbers kept, null and undeclared keys dropped', (t) => {
  t.deepEqual(parseStatsOutput('{"connections":3,"max_connections":100,"hit_ratio":null,"other":7}', SPECS), { connections: 3, max_connections: 100 });
  t.deepEqual(parseStatsOutput('{"connections":"3","hit_ratio":0.25}', SPECS), { hit_ratio: 0.25 }, 'a string is not a number');
  t.deepEqual(parseStatsOutput('{}', SPECS), {});
});

test('stats output: anything but one JSON object is refused with a reason', (t) => {
  for (const output of ['', 'connections 3', '[1,2]', '3', 'null', '{"connections":3}\n{"connections":4}']) {
    t.throws(() => parseStatsOutput(output, SPECS), { instanceOf: StatsOutputError, message: /something other than one JSON object/ }, output);
  }
  t.throws(() => parseStatsOutput(`{"connections":${'1'.repeat(STATS_OUTPUT_LIMIT)}}`, SPECS), { message: /more than \d+ bytes/ });
});

test('dashboard links: placeholders from the instance, none when a port is not published', (t) => {
  t.is(renderLink('http://{host}:{ports.management}/', '10.0.0.5', 40000, { management: 40001 }), 'http://10.0.0.5:40001/');
  t.is(renderLink('https://{host}:{ports.management_tls}/', '10.0.0.5', 40000, { management: 40001 }), undefined);
  t.is(renderLink('http://{host}:{port}/x', 'h', undefined, {}), undefined);
});

/** A catalog of the real postgresql folder alone, its service.json changed by `edit` and its folder by `files`. */
const catalogWith = (edit: (service: any) => void, files?: (folder: string) => void): string => catalogCopy('postgresql', { edit, files });

const loadError = (dir: string) => {
  try {
    loadCatalog(dir, 'x/');
    return 'loaded';
  } catch (error) {
    return error instanceof CatalogError ? error.message : `not a CatalogError: ${String(error)}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

test('catalog: the shipped postgresql stats load, in order, with scripts/stats', (t) => {
  const dir = catalogWith(() => {});
  try {
    const [definition] = loadCatalog(dir, 'x/');
    t.deepEqual(
      definition!.stats!.map((stat) => stat.name),
      ['connections', 'max_connections', 'database_size_bytes', 'longest_query_seconds'],
    );
    t.true(definition!.scripts.has('stats'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('catalog: stats and scripts/stats go together; names unique; of names another stat; units and links checked', (t) => {
  t.regex(
    loadError(
      catalogWith(
        () => {},
        (folder) => rmSync(path.join(folder, 'scripts', 'stats')),
      ),
    ),
    /stats is declared, but .*scripts\/stats is missing/,
  );
  t.regex(loadError(catalogWith((service) => delete service.stats)), /stats is missing, but the folder has scripts\/stats/);
  t.regex(loadError(catalogWith((service) => service.stats.push({ ...service.stats[0] }))), /stats\[4\]\.name "connections" is used twice/);
  t.regex(loadError(catalogWith((service) => (service.stats[0].of = 'nothing'))), /stats\[0\]\.of names "nothing", which is no other stat/);
  t.regex(loadError(catalogWith((service) => (service.stats[0].unit = 'percent'))), /stats\[0\]\.unit must be one of count, bytes, seconds, per_second, ratio/);
  t.regex(loadError(catalogWith((service) => (service.stats[0].name = 'Connections'))), /stats\[0\]\.name must match/);
  t.regex(
    loadError(catalogWith((service) => (service.dashboard_links = [{ label: 'UI', url: 'http://{host}:{ports.nope}/' }]))),
    /dashboard_links\[0\]\.url has the placeholder \{ports\.nope\}/,
  );
  t.regex(
    loadError(catalogWith((service) => (service.dashboard_links = [{ label: 'UI', url: 'http://{binding.password}@{host}/' }]))),
    /only \{host\}, \{port\} and \{ports\.<a name of container\.extra_ports>\}/,
  );
  t.regex(
    loadError(catalogWith((service) => (service.dashboard_links = [{ label: 'UI', url: 'ftp://{host}/' }]))),
    /must be an http:\/\/ or https:\/\/ URL template/,
  );
});

/** A store in memory with Redis's lease rule: a lease is taken when free or renewed by its holder. */
function memoryStore(instances: InstanceRecord[]) {
  const leases = new Map<string, string>();
  const readings = new Map<string, EngineStatsRecord>([['gone', { at: '', expiresAt: '', values: {} }]]);
  return {
    readings,
    listInstances: async () => instances,
    claimLease: async (name: string, owner: string) => {
      if (leases.has(name) && leases.get(name) !== owner) return false;
      leases.set(name, owner);
      return true;
    },
    setEngineStats: async (id: string, record: EngineStatsRecord) => void readings.set(id, record),
    engineStats: async () => new Map(readings),
    forgetEngineStats: async (ids: string[]) => ids.forEach((id) => readings.delete(id)),
  };
}

test('collection: one replica per interval; a stopped container is a reading without numbers; gone instances dropped', async (t) => {
  const dir = catalogWith(() => {});
  const definitions = loadCatalog(dir, 'x/');
  rmSync(dir, { recursive: true, force: true });
  const instance = { id: 'db-1', serviceId: definitions[0]!.offering.id, planId: 'p', state: 'ready' } as InstanceRecord;
  const store = memoryStore([instance, { ...instance, id: 'db-2', state: 'provisioning' }]);
  let located = 0;
  const containers = {
    inspect: async () => undefined,
    locate: async () => {
      located++;
      return { engine: { inspectContainer: async () => ({ running: false, status: 'exited' }) }, container: 'c' } as never;
    },
  };
  const parts = { store, containers, definitions, log: createLogger('silent'), intervalMs: 60_000 };
  const first = new EngineStats({ ...parts, owner: 'replica-1' });
  const second = new EngineStats({ ...parts, owner: 'replica-2' });
  const ran = [await first.pass(), await second.pass()];
  t.is(ran.filter(Boolean).length, 1, 'only one replica collects in an interval');
  t.is(located, 1, 'the provisioning instance is not asked');
  const reading = store.readings.get('db-1')!;
  t.is(reading.values, undefined);
  t.regex(reading.error!, /the container is exited/);
  t.is(Date.parse(reading.expiresAt) - Date.parse(reading.at), 3 * 60_000);
  t.false(store.readings.has('gone'));

  // The dashboard shares one reading between viewers for a few seconds.
  await Promise.all([first.read(instance), first.read(instance), first.read(instance)]);
  t.is(located, 2);
});
