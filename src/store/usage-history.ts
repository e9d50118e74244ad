import type { Redis } from 'ioredis';
import type { UsageCounters } from '../docker/types.js';

/** One usage sample as kept: the engine's running totals at `at` (ms since the epoch); rates come from two of them. */
export type UsageSample = UsageCounters & { at: number };

/** One measure of the bytes an instance's data volume holds. */
export interface DiskSample {
  at: number;
  usedBytes: number;
}

/**
 * Pushes ARGV[2] onto the list KEYS[2], trims it to ARGV[3] entries and lets it expire after ARGV[4] s, only while the
 * instance ARGV[1] is in the set KEYS[1]: a sample taken just before a deprovision never brings the list back.
 */
const PUSH_WHILE_LIVE = `if redis.call('sismember', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('lpush', KEYS[2], ARGV[2])
redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[3]) - 1)
redis.call('expire', KEYS[2], ARGV[4])
return 1`;

const SAMPLE_FIELDS = ['at', 'cpuNanos', 'memoryBytes', 'memoryLimitBytes', 'networkRxBytes', 'networkTxBytes', 'blockReadBytes', 'blockWriteBytes'] as const;

/**
 * Each instance's recent usage: two capped lists, newest first, of compact JSON arrays (usage:<instance>,
 * disk:<instance>), each trimmed to what the kept time needs and expiring once no one samples it; removed with the
 * instance. `key` is the store's key function, so the keys live under its prefix.
 */
export class UsageHistoryStore {
  constructor(
    private readonly redis: Redis,
    private readonly key: (...parts: string[]) => string,
  ) {}

  /** Keeps `sample` among the newest `keep`; false when the instance is gone (nothing is written then). */
  async pushSample(instanceId: string, sample: UsageSample, keep: number, ttlSeconds: number): Promise<boolean> {
    const encoded = JSON.stringify(SAMPLE_FIELDS.map((field) => sample[field]));
    return (await this.redis.eval(PUSH_WHILE_LIVE, 2, this.key('instances'), this.key('usage', instanceId), instanceId, encoded, keep, ttlSeconds)) === 1;
  }

  async pushDisk(instanceId: string, sample: DiskSample, keep: number, ttlSeconds: number): Promise<boolean> {
    const encoded = JSON.stringify([sample.at, sample.usedBytes]);
    return (await this.redis.eval(PUSH_WHILE_LIVE, 2, this.key('instances'), this.key('disk', instanceId), instanceId, encoded, keep, ttlSeconds)) === 1;
  }

  /** Oldest first. */
  async samples(instanceId: string): Promise<UsageSample[]> {
    const raw = await this.redis.lrange(this.key('usage', instanceId), 0, -1);
    return raw
      .map((entry) => JSON.parse(entry) as number[])
      .reverse()
      .map((values) => Object.fromEntries(SAMPLE_FIELDS.map((field, index) => [field, values[index] ?? 0])) as unknown as UsageSample);
  }

  /** Oldest first. */
  async diskSamples(instanceId: string): Promise<DiskSample[]> {
    const raw = await this.redis.lrange(this.key('disk', instanceId), 0, -1);
    return raw.map(parseDisk).reverse();
  }

  /** The newest disk measure of each instance that has one, in one round trip. */
  async latestDisk(instanceIds: string[]): Promise<Map<string, DiskSample>> {
    if (instanceIds.length === 0) return new Map();
    const pipeline = this.redis.pipeline();
    for (const id of instanceIds) pipeline.lindex(this.key('disk', id), 0);
    const replies = (await pipeline.exec()) ?? [];
    const latest = new Map<string, DiskSample>();
    replies.forEach(([error, raw], index) => {
      if (!error && typeof raw === 'string') latest.set(instanceIds[index]!, parseDisk(raw));
    });
    return latest;
  }

  /** The keys to remove with an instance. */
  keysOf(instanceId: string): string[] {
    return [this.key('usage', instanceId), this.key('disk', instanceId)];
  }
}

function parseDisk(entry: string): DiskSample {
  const [at, usedBytes] = JSON.parse(entry) as [number, number];
  return { at, usedBytes };
}
