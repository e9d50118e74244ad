import type { Readable } from 'node:stream';

/** One stored object, as a listing reports it. */
export interface StoredObject {
  /** The key it was put under (without the store's own prefix). */
  key: string;
  bytes: number;
  modified: Date;
}

export interface PutOptions {
  /** Expected size in bytes, if known: lets the S3 store choose a part size that stays within 10,000 parts. */
  sizeHint?: number;
  /** Aborts the upload; nothing is left under the key (the error thrown is the abort reason). */
  signal?: AbortSignal;
}

/**
 * Where sealed backups are kept. Keys are relative paths of segments separated by "/": letters, digits and
 * `_ - . = + : @`, a segment not starting with "." (so no "..", no absolute paths), e.g. `<instance>/<backup>.osbbak`.
 * A put is all or nothing: until it resolves no object is visible under the key, and a failed or aborted put leaves
 * nothing behind (a put under an existing key replaces it whole).
 */
export interface BackupStore {
  /**
   * Streams `body` into the store under `key`. Errors of the body itself (e.g. the backup script failed) are
   * rethrown unchanged; errors of the store are BackupStoreErrors.
   */
  put(key: string, body: Readable, options?: PutOptions): Promise<{ bytes: number }>;
  /** The stored bytes; a BackupStoreError with problem `not-found` when the key has no object. */
  get(key: string): Promise<Readable>;
  /** Removes the object; a key without one is not an error. */
  delete(key: string): Promise<void>;
  /** Objects whose key starts with `prefix` (a plain string prefix, as in S3), ordered by key. */
  list(prefix?: string): Promise<StoredObject[]>;
  /** Where the store is, for logs and messages: never a secret. */
  describe(): string;
}

export type BackupStoreProblem = 'not-found' | 'invalid-key' | 'unreachable' | 'no-bucket' | 'access-denied' | 'failed';

/** A store operation that failed; the message says where and why, and never carries a credential. */
export class BackupStoreError extends Error {
  constructor(
    readonly problem: BackupStoreProblem,
    message: string,
  ) {
    super(message);
    this.name = 'BackupStoreError';
  }
}

const SEGMENT = /^[A-Za-z0-9_=+:@-][A-Za-z0-9._=+:@-]*$/;
const MAX_KEY_LENGTH = 900;

/** Throws a BackupStoreError (`invalid-key`) unless `key` is a relative path of allowed segments. */
export function checkStoreKey(key: string): void {
  if (key.length === 0 || key.length > MAX_KEY_LENGTH || !key.split('/').every((segment) => SEGMENT.test(segment))) {
    throw new BackupStoreError(
      'invalid-key',
      `backup key ${JSON.stringify(key.slice(0, 100))} is not allowed: it must be a relative path of segments made of letters, digits and _-.=+:@, none starting with "."`,
    );
  }
}

/** Like checkStoreKey, for a listing prefix: it may be empty, end with "/", or end in part of a segment. */
export function checkStorePrefix(prefix: string): void {
  if (prefix === '') return;
  const segments = prefix.split('/');
  const last = segments.pop()!;
  if (prefix.length > MAX_KEY_LENGTH || !segments.every((segment) => SEGMENT.test(segment)) || (last !== '' && !SEGMENT.test(last))) {
    throw new BackupStoreError('invalid-key', `backup key prefix ${JSON.stringify(prefix.slice(0, 100))} is not allowed`);
  }
}
