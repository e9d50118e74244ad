/**
 * Backups' storage and stream layer: sealing (gzip + chunked AES-256-GCM), the stores (a local folder, S3) and
 * retention. It knows nothing of the broker or HTTP: it imports only node, npm packages and src/config.ts.
 */
import type { BackupStoreConfig } from './config.js';
import { LocalBackupStore } from './local-store.js';
import { S3BackupStore } from './s3-store.js';
import type { BackupStore } from './stores.js';

export * from './config.js';
export * from './local-store.js';
export * from './retention.js';
export * from './s3-store.js';
export * from './seal-stream.js';
export * from './stores.js';
export * from './transfer.js';

/** The store the configuration names. */
export function createBackupStore(config: BackupStoreConfig): BackupStore {
  if (config.kind === 'local') return new LocalBackupStore(config.dir);
  const { kind: _kind, ...options } = config;
  return new S3BackupStore(options);
}
