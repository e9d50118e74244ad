import { setTimeout as delay } from 'node:timers/promises';

export interface WaitOptions {
  /** Pause between two tries. */
  intervalMs: number;
  /** Give up after this long; the last try may start just before it. */
  timeoutMs: number;
  /** Stops the wait at once (the abort reason is thrown). */
  signal?: AbortSignal;
  /** The error to throw when time runs out; a plain WaitTimeoutError otherwise. */
  onTimeout?: () => Error;
}

export class WaitTimeoutError extends Error {}

/**
 * The one polling loop: calls `probe` until it returns something other than undefined, pausing `intervalMs`
 * between tries. An error thrown by `probe` ends the wait; a probe that should retry on errors catches them.
 */
export async function waitFor<T>(probe: () => Promise<T | undefined> | T | undefined, options: WaitOptions): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    options.signal?.throwIfAborted();
    const result = await probe();
    if (result !== undefined) return result;
    if (Date.now() >= deadline) throw options.onTimeout?.() ?? new WaitTimeoutError(`gave up after ${options.timeoutMs} ms`);
    await delay(options.intervalMs, undefined, { signal: options.signal });
  }
}
