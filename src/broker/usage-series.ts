import type { DiskSample, UsageSample } from '../store/usage-history.js';

/** An instance's data volume against its plan's disk_mb: a soft limit, reported and never enforced. */
export interface DiskStatus {
  usedBytes: number;
  /** Absent when the plan sets no disk_mb. */
  limitBytes?: number;
  over: boolean;
  /** When du measured it (RFC 3339). */
  measuredAt: string;
}

/**
 * The kept hour as columns, oldest first, the way a chart reads them: times in seconds since the epoch, and per
 * sample the CPU and rates over the time since the one before. A rate is null after a gap (no samples while the
 * container was down) or a restart (the engine's totals start again from zero), so a chart breaks its line there.
 */
export interface UsageHistory {
  sampleSeconds: number;
  keepSeconds: number;
  time: number[];
  /** Percent of one CPU (the plan's cpus × 100 is the most). */
  cpuPercent: Array<number | null>;
  memoryBytes: number[];
  memoryLimitBytes?: number;
  networkRxBytesPerSecond: Array<number | null>;
  networkTxBytesPerSecond: Array<number | null>;
  blockReadBytesPerSecond: Array<number | null>;
  blockWriteBytesPerSecond: Array<number | null>;
  disk: { time: number[]; usedBytes: number[] };
  /** The latest measure against the plan's disk_mb; absent before the first one. */
  diskStatus?: DiskStatus;
  /** When the newest sample was taken (RFC 3339); absent without samples. */
  lastSampleAt?: string;
}

/** A sample further than this many intervals from the one before follows a gap. */
const GAP_INTERVALS = 2.5;

export function diskStatus(latest: DiskSample, diskMb: number | undefined): DiskStatus {
  const limitBytes = diskMb ? diskMb * 1024 * 1024 : undefined;
  return {
    usedBytes: latest.usedBytes,
    ...(limitBytes ? { limitBytes } : {}),
    over: limitBytes !== undefined && latest.usedBytes > limitBytes,
    measuredAt: new Date(latest.at).toISOString(),
  };
}

export function usageHistory(
  samples: UsageSample[],
  disk: DiskSample[],
  options: { sampleSeconds: number; keepSeconds: number; diskMb?: number; now?: number },
): UsageHistory {
  const since = (options.now ?? Date.now()) - options.keepSeconds * 1000;
  const kept = samples.filter((sample) => sample.at >= since);
  const keptDisk = disk.filter((sample) => sample.at >= since);
  const history: UsageHistory = {
    sampleSeconds: options.sampleSeconds,
    keepSeconds: options.keepSeconds,
    time: [],
    cpuPercent: [],
    memoryBytes: [],
    networkRxBytesPerSecond: [],
    networkTxBytesPerSecond: [],
    blockReadBytesPerSecond: [],
    blockWriteBytesPerSecond: [],
    disk: { time: keptDisk.map((sample) => sample.at / 1000), usedBytes: keptDisk.map((sample) => sample.usedBytes) },
  };
  kept.forEach((sample, index) => {
    const before = kept[index - 1];
    const seconds = before ? (sample.at - before.at) / 1000 : 0;
    const continuous = before !== undefined && seconds > 0 && seconds <= GAP_INTERVALS * options.sampleSeconds && sample.cpuNanos >= before.cpuNanos;
    const rate = (field: keyof UsageSample) => (continuous ? Math.max(0, sample[field] - before[field]) / seconds : null);
    history.time.push(sample.at / 1000);
    const cpu = rate('cpuNanos');
    history.cpuPercent.push(cpu === null ? null : cpu / 1e7);
    history.memoryBytes.push(sample.memoryBytes);
    history.networkRxBytesPerSecond.push(rate('networkRxBytes'));
    history.networkTxBytesPerSecond.push(rate('networkTxBytes'));
    history.blockReadBytesPerSecond.push(rate('blockReadBytes'));
    history.blockWriteBytesPerSecond.push(rate('blockWriteBytes'));
  });
  const newest = kept.at(-1);
  if (newest) {
    history.memoryLimitBytes = newest.memoryLimitBytes;
    history.lastSampleAt = new Date(newest.at).toISOString();
  }
  const latestDisk = keptDisk.at(-1) ?? disk.at(-1);
  if (latestDisk) history.diskStatus = diskStatus(latestDisk, options.diskMb);
  return history;
}
