import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openStream, sealStream, type OpenOptions, type SealOptions, type StreamSummary } from './seal-stream.js';
import type { BackupStore, PutOptions } from './stores.js';

/**
 * Seals `dump` (e.g. a backup script's stdout) into `store` under `key`, in one streaming pass. Resolves with the
 * figures to record once the object is complete. Rejects with the first thing that went wrong, so the cause is
 * not hidden behind its consequences: the dump's own error (the script failed), else the store's
 * BackupStoreError. A failed transfer leaves no object under the key.
 */
export async function putSealed(
  store: BackupStore,
  key: string,
  dump: Readable,
  brokerKey: Buffer,
  options: SealOptions & PutOptions = {},
): Promise<StreamSummary> {
  const sealing = sealStream(brokerKey, options);
  let first: { error: unknown } | undefined;
  const note = (error: unknown) => {
    first ??= { error };
    throw error;
  };
  const results = await Promise.allSettled([
    pipeline(dump, sealing.stream).catch(note),
    store.put(key, sealing.stream, { sizeHint: options.sizeHint, signal: options.signal }).catch(note),
  ]);
  if (first) throw first.error;
  const summary = sealing.summary();
  const put = results[1];
  if (put.status === 'fulfilled' && put.value.bytes !== summary.storedBytes) {
    await store.delete(key).catch(() => undefined);
    throw new Error(`backup ${key}: ${describeBytes(put.value.bytes)} reached ${store.describe()}, ${describeBytes(summary.storedBytes)} were sealed`);
  }
  return summary;
}

/**
 * Streams the backup under `key` out of `store`, verified and decrypted, into `destination` (e.g. a restore
 * script's stdin). Rejects with the first error: a BackupStoreError, a BackupFormatError (wrong key, damaged,
 * truncated, ...), or the destination's. Bytes already written before an error were authentic, but the restore
 * must be treated as failed. The destination is ended or destroyed either way.
 */
export async function getOpened(
  store: BackupStore,
  key: string,
  destination: Writable,
  brokerKey: Buffer,
  options: OpenOptions & { signal?: AbortSignal } = {},
): Promise<StreamSummary> {
  const opening = openStream(brokerKey, options);
  let source: Readable;
  try {
    source = await store.get(key);
  } catch (error) {
    destination.destroy(); // as the pipeline would have: whatever waits on it sees it end
    throw error;
  }
  await pipeline(source, opening.stream, destination, { signal: options.signal });
  return opening.summary();
}

function describeBytes(bytes: number): string {
  return bytes === 1 ? '1 byte' : `${bytes} bytes`;
}
