import { Redis } from 'ioredis';
import { waitFor } from '../../src/wait.js';

/** Polls `probe` until it returns something truthy; throws after `timeoutMs` saying what it waited for. */
export function waitUntil<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  return waitFor(async () => (await probe()) || undefined, {
    intervalMs: everyMs,
    timeoutMs,
    onTimeout: () => new Error(`timed out after ${timeoutMs} ms waiting for ${what}`),
  });
}

/**
 * A stored record as the broker wrote it (its secrets stay sealed): for looking at what a killed broker left
 * behind. kind: instance | operation | binding (id "<instance>:<binding>").
 */
export async function storedRecord(redisUrl: string, brokerId: string, kind: string, id: string): Promise<Record<string, any> | undefined> {
  const redis = new Redis(redisUrl);
  try {
    const raw = await redis.get(`osb:${brokerId}:${kind}:${id}`);
    return raw === null ? undefined : (JSON.parse(raw) as Record<string, any>);
  } finally {
    redis.disconnect();
  }
}
