import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { EngineInventory, StateStore } from './contracts.js';

export interface RecoveryReport {
  /** Operations found in progress; the sweep continues those whose lease has lapsed. */
  unfinished: number;
  orphanContainers: string[];
  orphanVolumes: string[];
  removedOrphans: boolean;
  missingContainers: string[];
  releasedPorts: number[];
}

/**
 * At start, safe while other processes of the same broker run: operations left in progress are made known to the
 * sweep (records from before leases existed included), containers and volumes that no instance owns are reported
 * (and removed when configured), and port reservations no instance holds are freed. Engine objects and
 * reservations are listed before the instances, and each is checked once more before it is touched, so whatever a
 * live process creates meanwhile is never mistaken for an orphan.
 */
export async function recover(store: StateStore, engine: EngineInventory, config: Config, log: Logger): Promise<RecoveryReport> {
  const report: RecoveryReport = {
    unfinished: 0,
    orphanContainers: [],
    orphanVolumes: [],
    removedOrphans: config.removeOrphans,
    missingContainers: [],
    releasedPorts: [],
  };
  const { workloads: containers, volumes, unreachable } = await engine.inventory();
  if (unreachable.length) log.warn({ nodes: unreachable }, 'nodes that did not answer were left out of the orphan check');
  const reservations = await store.listPortReservations();
  const instances = await store.listInstances();
  const known = new Set(instances.map((instance) => instance.id));
  const containerOf = new Map(containers.map((container) => [container.instanceId, container]));
  const ownerless = async (instanceId: string | undefined) => {
    if (!instanceId) return true;
    if (known.has(instanceId)) return false;
    const record = await store.getInstance(instanceId);
    return !record || record.state === 'deleted';
  };

  for (const instance of instances) {
    const operation = await store.getOperation(instance.lastOperationId);
    const operations = [operation];
    for (const binding of await store.listBindings(instance.id)) operations.push(await store.getOperation(binding.lastOperationId));
    for (const unfinished of operations) {
      if (unfinished?.state !== 'in progress') continue;
      // Records from before leases existed are not listed as active yet. Only the id is added: rewriting the record
      // could undo a live replica finishing it meanwhile (the sweep reads the record again before it acts).
      await store.rememberActiveOperation(unfinished.id);
      report.unfinished++;
    }
    if (instance.state === 'ready' && operation?.state !== 'in progress' && !containerOf.has(instance.id)) {
      report.missingContainers.push(instance.id);
      log.error({ instanceId: instance.id, container: instance.containerName }, 'the container of a ready instance is missing');
    }
  }

  for (const container of containers) {
    if (!(await ownerless(container.instanceId))) continue;
    report.orphanContainers.push(container.name);
    if (config.removeOrphans) await engine.removeWorkload(container);
  }
  for (const volume of volumes) {
    if (!(await ownerless(volume.instanceId))) continue;
    report.orphanVolumes.push(volume.name);
    if (config.removeOrphans) await engine.removeVolume(volume);
  }
  if (report.orphanContainers.length || report.orphanVolumes.length) {
    log.warn(
      { containers: report.orphanContainers, volumes: report.orphanVolumes, removed: config.removeOrphans },
      config.removeOrphans
        ? 'removed containers and volumes no instance owns'
        : 'found containers and volumes no instance owns; set BROKER_REMOVE_ORPHANS=true to remove them',
    );
  }

  for (const { port, scope, holder } of reservations) {
    if (!(await ownerless(holder))) continue;
    await store.releasePort(port, holder, scope);
    report.releasedPorts.push(port);
  }
  log.info({ ...report, instances: instances.length }, 'recovery done');
  return report;
}
