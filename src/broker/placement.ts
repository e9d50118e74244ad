/** Where a new instance goes on a Swarm: pure rules, so they can be tested without one. */

/** Node labels an operator sets (`docker node update --label-add`). */
export const NODE_LABEL = {
  /** The node's Docker API, for exec, logs, processes and usage of the instances on it: tcp://host:2375 or https://host:2376. */
  engine: 'io.osb-broker.engine',
  /** The address clients use to reach instances on this node; the node's Swarm address when unset. */
  advertiseHost: 'io.osb-broker.advertise-host',
  /** The most instances of this broker the node may hold. */
  maxInstances: 'io.osb-broker.max-instances',
} as const;

export interface PlacementNode {
  id: string;
  hostname: string;
  availability: string;
  state: string;
  memoryBytes: number;
  labels: Record<string, string>;
  /** Where clients reach instances on this node. */
  advertisedHost: string;
  /** Why the broker cannot use the node at all (e.g. it cannot reach its engine), if it cannot. */
  unusable?: string;
}

/** What is already on a node: the memory its instances reserve and how many there are. */
export interface NodeLoad {
  reservedBytes: number;
  instances: number;
}

export type PlacementResult = { node: PlacementNode } | { error: string };

/**
 * Chooses a node for an instance that reserves `memoryBytes`: one that is active and ready, has that much memory
 * left beside what its instances reserve, and is under its instance cap; among those the one with the most memory
 * left relative to its size, then the fewest instances (spread). When none fits, says why for each node.
 */
export function chooseNode(nodes: PlacementNode[], load: Map<string, NodeLoad>, memoryBytes: number): PlacementResult {
  const reasons: string[] = [];
  const fitting: Array<{ node: PlacementNode; free: number; instances: number }> = [];
  for (const node of nodes) {
    const used = load.get(node.id) ?? { reservedBytes: 0, instances: 0 };
    const free = node.memoryBytes - used.reservedBytes;
    const cap = maxInstances(node);
    const why =
      node.unusable ??
      (node.availability !== 'active'
        ? `availability ${node.availability}`
        : node.state !== 'ready'
          ? `state ${node.state}`
          : free < memoryBytes
            ? `${mib(free)} MiB of memory left, ${mib(memoryBytes)} MiB needed`
            : cap !== undefined && used.instances >= cap
              ? `holds ${used.instances} instances, its ${NODE_LABEL.maxInstances} is ${cap}`
              : undefined);
    if (why) reasons.push(`${node.hostname}: ${why}`);
    else fitting.push({ node, free, instances: used.instances });
  }
  if (fitting.length === 0) {
    const detail = reasons.length ? ` (${reasons.join('; ')})` : ' (the Swarm has no nodes)';
    return { error: `no Swarm node has room for this instance${detail}` };
  }
  fitting.sort(
    (a, b) => b.free / (b.node.memoryBytes || 1) - a.free / (a.node.memoryBytes || 1) || a.instances - b.instances || a.node.id.localeCompare(b.node.id),
  );
  return { node: fitting[0]!.node };
}

function maxInstances(node: PlacementNode): number | undefined {
  const raw = node.labels[NODE_LABEL.maxInstances];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  // A label that is not a whole number is ignored rather than blocking every provision.
  return Number.isInteger(value) && value >= 0 ? value : undefined;
}

const mib = (bytes: number) => Math.floor(bytes / (1024 * 1024));
