import path from 'node:path';
import { ConfigError, int, secret } from '../config.js';
import { parseBackupCron } from './cron.js';
import type { RetentionSettings } from './retention.js';
import type { S3StoreOptions } from './s3-store.js';

export type BackupStoreConfig = { kind: 'local'; dir: string } | ({ kind: 's3' } & S3StoreOptions);

export interface BackupConfig {
  store: BackupStoreConfig;
  retention: RetentionSettings;
  /** The schedule of instances that set none (BROKER_BACKUP_SCHEDULE, a cron expression); undefined: no default. */
  schedule?: string;
  /** How often one replica looks for backups of deleted instances that retention lets go; undefined: hourly. */
  deletedPassSeconds?: number;
}

/** true, false, or undefined when unset. */
function flag(env: NodeJS.ProcessEnv, name: string): boolean | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  if (/^(1|true|yes)$/i.test(raw)) return true;
  if (/^(0|false|no)$/i.test(raw)) return false;
  throw new ConfigError(`${name} must be true or false (got "${raw}")`);
}

/** An http(s) URL without credentials in it; the value is never repeated in the error, in case it holds one. */
function endpoint(raw: string | undefined): string | undefined {
  if (!raw) return undefined;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError('BROKER_BACKUP_S3_ENDPOINT must be a URL such as http://127.0.0.1:9000');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError('BROKER_BACKUP_S3_ENDPOINT must start with http:// or https://');
  if (url.username || url.password) {
    throw new ConfigError('BROKER_BACKUP_S3_ENDPOINT must not hold credentials: set BROKER_BACKUP_S3_ACCESS_KEY_ID and BROKER_BACKUP_S3_SECRET_ACCESS_KEY');
  }
  return raw.replace(/\/+$/, '');
}

function s3Store(env: NodeJS.ProcessEnv): BackupStoreConfig {
  const bucket = env.BROKER_BACKUP_S3_BUCKET;
  if (!bucket) throw new ConfigError('BROKER_BACKUP_STORE=s3 needs BROKER_BACKUP_S3_BUCKET');
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new ConfigError(`BROKER_BACKUP_S3_BUCKET must be an S3 bucket name: 3-63 characters of a-z, 0-9, "." and "-" (got "${bucket}")`);
  }
  const prefix = (env.BROKER_BACKUP_S3_PREFIX ?? '').replace(/^\/+/, '');
  if (prefix && !/^([A-Za-z0-9_=+:@-][A-Za-z0-9._=+:@-]*\/?)+$/.test(prefix)) {
    throw new ConfigError(`BROKER_BACKUP_S3_PREFIX must be path segments of letters, digits and _-.=+:@, none starting with "." (got "${prefix}")`);
  }
  const accessKeyId = secret(env, 'BROKER_BACKUP_S3_ACCESS_KEY_ID');
  const secretAccessKey = secret(env, 'BROKER_BACKUP_S3_SECRET_ACCESS_KEY');
  if (!accessKeyId !== !secretAccessKey) {
    throw new ConfigError(
      'set both BROKER_BACKUP_S3_ACCESS_KEY_ID and BROKER_BACKUP_S3_SECRET_ACCESS_KEY (or their _FILE variants), or neither to use the AWS default credentials',
    );
  }
  const s3Endpoint = endpoint(env.BROKER_BACKUP_S3_ENDPOINT);
  return {
    kind: 's3',
    bucket,
    prefix,
    endpoint: s3Endpoint,
    region: env.BROKER_BACKUP_S3_REGION || 'us-east-1',
    accessKeyId,
    secretAccessKey,
    forcePathStyle: flag(env, 'BROKER_BACKUP_S3_FORCE_PATH_STYLE') ?? !!s3Endpoint,
    partSizeBytes: int(env, 'BROKER_BACKUP_S3_PART_SIZE_MB', 8, 5, 5120) * 1024 * 1024,
  };
}

/** A cron expression checked now, so a typo stops the broker at start rather than every scheduled run; "off" or unset: none. */
function defaultSchedule(raw: string | undefined): string | undefined {
  const expression = raw?.trim();
  if (!expression || expression === 'off') return undefined;
  try {
    parseBackupCron(expression);
  } catch (error) {
    throw new ConfigError(`BROKER_BACKUP_SCHEDULE: ${(error as Error).message}`);
  }
  return expression;
}

/** Backup settings from the environment (see README "Backups"); throws a ConfigError naming the bad variable. */
export function loadBackupConfig(env: NodeJS.ProcessEnv = process.env): BackupConfig {
  const kind = env.BROKER_BACKUP_STORE || 'local';
  let store: BackupStoreConfig;
  if (kind === 'local') {
    store = { kind: 'local', dir: path.resolve(env.BROKER_BACKUP_DIR || path.join(env.BROKER_STATE_DIR || '.broker-state', 'backups')) };
  } else if (kind === 's3') {
    store = s3Store(env);
  } else {
    throw new ConfigError(`BROKER_BACKUP_STORE must be local or s3 (got "${kind}")`);
  }
  return {
    store,
    schedule: defaultSchedule(env.BROKER_BACKUP_SCHEDULE),
    deletedPassSeconds: int(env, 'BROKER_BACKUP_DELETED_PASS_SECONDS', 3600, 1, 7 * 86400),
    retention: {
      keepLast: int(env, 'BROKER_BACKUP_KEEP_LAST', 7, 0, 10_000),
      keepDays: int(env, 'BROKER_BACKUP_KEEP_DAYS', 7, 0, 36_500),
      keepDeletedDays: int(env, 'BROKER_BACKUP_KEEP_DELETED_DAYS', 30, 0, 36_500),
    },
  };
}
