import type { ServiceDefinition } from '../catalog/definition.js';
import type { InstanceRecord, OperationRecord } from '../store/records.js';
import type { Placement, StateStore } from './contracts.js';
import type { Offerings } from './offerings.js';
import { Cancelled, now } from './operations.js';
import { chooseNode, type NodeLoad } from './placement.js';

const MIB = 1024 * 1024;
/** One placement at a time across replicas, so two provisions never both take a node's last room. */
const PLACEMENT_LOCK = 'placement';

/**
 * Chooses the instance's node (Swarm) and records it with the node's address on the instance. What nodes hold is
 * read from the store, where every placed instance is, including those still starting on other replicas.
 */
export async function placeInstance(
  store: StateStore,
  placement: Placement,
  offerings: Offerings,
  definition: ServiceDefinition,
  instance: InstanceRecord,
  operation: OperationRecord,
): Promise<InstanceRecord> {
  if (instance.node) return instance;
  const memoryBytes = definition.limits.get(instance.planId)!.memoryMb * MIB;
  return store.withLock(
    PLACEMENT_LOCK,
    async () => {
      const nodes = await placement.candidates();
      const chosen = chooseNode(nodes, loadByNode(await store.listInstances(), offerings), memoryBytes);
      if ('error' in chosen) throw new Error(chosen.error);
      return store.withLock(
        instance.id,
        async () => {
          const current = await store.getInstance(instance.id);
          if (!current || current.lastOperationId !== operation.id) throw new Cancelled('a deprovision took over this instance');
          const placed = { ...current, node: chosen.node.id, advertisedHost: chosen.node.advertisedHost, updatedAt: now() };
          await store.putInstance(placed);
          return placed;
        },
        60_000,
      );
    },
    60_000,
  );
}

/** The memory the live instances on each node reserve (plans reserve what they limit), and how many there are. */
function loadByNode(instances: InstanceRecord[], offerings: Offerings): Map<string, NodeLoad> {
  const load = new Map<string, NodeLoad>();
  for (const instance of instances) {
    if (!instance.node || instance.state === 'deleted' || (instance.state === 'failed' && !instance.hostPort)) continue;
    let memoryMb = 0;
    try {
      memoryMb = offerings.definitionOf(instance).limits.get(instance.planId)?.memoryMb ?? 0;
    } catch {
      // An offering gone from the catalog still runs; without its plan its reservation is unknown.
    }
    const entry = load.get(instance.node) ?? { reservedBytes: 0, instances: 0 };
    entry.reservedBytes += memoryMb * MIB;
    entry.instances++;
    load.set(instance.node, entry);
  }
  return load;
}
