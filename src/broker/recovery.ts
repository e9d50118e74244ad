import type { Config } from '../config.js';
import type { DockerEngine } from '../docker/engine.js';
import { LABEL } from '../docker/types.js';
import type { Logger } from '../log.js';
import type { RedisStore } from '../store/redis-store.js';
import type { DockerBroker } from './broker.js';

export interface RecoveryReport {
  resumed: number;
  orphanContainers: string[];
  orphanVolumes: string[];
  removedOrphans: boolean;
  missingContainers: string[];
  releasedPorts: number[];
}

/**
 * At start: operations a killed broker left in progress are resumed (every step is idempotent), containers and
 * volumes the store does not know are reported (and removed when configured), stale port reservations are freed.
 */
export async function recover(broker: DockerBroker, store: RedisStore, engine: DockerEngine, config: Config, log: Logger): Promise<RecoveryReport> {
  await store.clearLocks();
  const report: RecoveryReport = {
    resumed: 0,
    orphanContainers: [],
    orphanVolumes: [],
    removedOrphans: config.removeOrphans,
    missingContainers: [],
    releasedPorts: [],
  };
  const instances = await store.listInstances();
  const known = new Set(instances.map((instance) => instance.id));
  const containers = await engine.listContainers({ [LABEL.broker]: config.brokerId, [LABEL.role]: 'instance' });
  const containerOf = new Map(containers.map((container) => [container.labels[LABEL.instance], container]));

  for (const instance of instances) {
    const operation = await store.getOperation(instance.lastOperationId);
    if (operation?.state === 'in progress') {
      broker.resume(operation);
      report.resumed++;
    } else if (instance.state === 'ready' && !containerOf.has(instance.id)) {
      report.missingContainers.push(instance.id);
      log.error(
        { instanceId: instance.id, container: instance.containerName },
        'the container of a ready instance is missing; deprovision and provision it again',
      );
    }
    for (const binding of await store.listBindings(instance.id)) {
      const bindingOperation = await store.getOperation(binding.lastOperationId);
      if (bindingOperation?.state === 'in progress' && operation?.state !== 'in progress') {
        broker.resume(bindingOperation);
        report.resumed++;
      }
    }
  }

  for (const container of containers) {
    const instanceId = container.labels[LABEL.instance];
    if (instanceId && known.has(instanceId)) continue;
    report.orphanContainers.push(container.name);
    if (config.removeOrphans) await engine.removeContainer(container.name);
  }
  for (const volume of await engine.listVolumes({ [LABEL.broker]: config.brokerId, [LABEL.role]: 'instance' })) {
    const instanceId = volume.labels[LABEL.instance];
    if (instanceId && known.has(instanceId)) continue;
    report.orphanVolumes.push(volume.name);
    if (config.removeOrphans) await engine.removeVolume(volume.name);
  }
  if (report.orphanContainers.length || report.orphanVolumes.length) {
    log.warn(
      { containers: report.orphanContainers, volumes: report.orphanVolumes, removed: config.removeOrphans },
      config.removeOrphans
        ? 'removed containers and volumes no instance owns'
        : 'found containers and volumes no instance owns; set BROKER_REMOVE_ORPHANS=true to remove them',
    );
  }

  for (const [port, holder] of await store.listPortReservations()) {
    if (known.has(holder)) continue;
    await store.releasePort(port, holder);
    report.releasedPorts.push(port);
  }
  log.info({ ...report, instances: instances.length }, 'recovery done');
  return report;
}
