import type { ListedDisk, ListedInstance } from '../api/listing.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { DiskSample } from '../store/usage-history.js';
import { diskStatus } from './usage-series.js';

/** The plan's disk_mb of an instance, when its plan sets one. */
export function diskLimitMb(definitions: ServiceDefinition[], serviceId: string, planId: string): number | undefined {
  return definitions.find((definition) => definition.offering.id === serviceId)?.limits.get(planId)?.diskMb;
}

/** The listing with each instance's last measured data volume against its plan's disk_mb (a soft limit). */
export async function withDiskUsage(
  listed: ListedInstance[],
  latestDisk: (instanceIds: string[]) => Promise<Map<string, DiskSample>>,
  definitions: ServiceDefinition[],
): Promise<ListedInstance[]> {
  // The listing answers without disk figures while the store cannot give them; the rest of it is still true.
  const latest = await latestDisk(listed.map((instance) => instance.id)).catch(() => new Map<string, DiskSample>());
  return listed.map((instance) => {
    const sample = latest.get(instance.id);
    if (!sample) return instance;
    const status = diskStatus(sample, diskLimitMb(definitions, instance.service_id, instance.plan_id));
    const disk: ListedDisk = {
      used_bytes: status.usedBytes,
      ...(status.limitBytes !== undefined ? { limit_bytes: status.limitBytes } : {}),
      over: status.over,
      measured_at: status.measuredAt,
    };
    return { ...instance, disk };
  });
}
