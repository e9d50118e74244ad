import { DeleteObjectCommand, GetObjectCommand, paginateListObjectsV2, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { BackupStoreError, checkStoreKey, checkStorePrefix, type BackupStore, type PutOptions, type StoredObject } from './stores.js';

export interface S3StoreOptions {
  bucket: string;
  /** Prepended to every key, e.g. "backups/" (a "/" is added when missing). Default: none. */
  prefix?: string;
  /** An S3-compatible server, e.g. "http://127.0.0.1:9000"; default: AWS S3 of the region. */
  endpoint?: string;
  /** Default us-east-1. */
  region?: string;
  /** Both or neither; neither: the AWS SDK's default credential chain (AWS_* variables, instance role, ...). */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Bucket in the path (http://host/bucket/key), as MinIO-like servers want. Default: true with an endpoint. */
  forcePathStyle?: boolean;
  /** Bytes per multipart part, at least 5 MiB; default 8 MiB. Memory of one upload is about (queueSize + 2) parts. */
  partSizeBytes?: number;
  /** Parts uploaded at once. Default 2. */
  queueSize?: number;
  /** Tries per request (the SDK's retries with back-off). Default 3. */
  maxAttempts?: number;
  /** How long to wait for a connection. Default 5000 ms. */
  connectTimeoutMs?: number;
  /** How long a connection may stay silent within one request. Default 120000 ms. */
  idleTimeoutMs?: number;
}

const MIN_PART_BYTES = 5 * 1024 * 1024;
const MAX_PARTS = 10_000;
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'ECONNABORTED',
  'TimeoutError',
  'RequestTimeout',
]);

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  errors?: SdkError[];
  cause?: SdkError;
  $metadata?: { httpStatusCode?: number };
}

class ByteCounter extends Transform {
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}

/** The endpoint without any user or password in it, for messages. */
function printableEndpoint(endpoint: string | undefined, region: string): string {
  if (!endpoint) return `AWS S3 (${region})`;
  try {
    const url = new URL(endpoint);
    return `${url.protocol}//${url.host}${url.pathname === '/' ? '' : url.pathname}`;
  } catch {
    return 'the configured endpoint';
  }
}

function endpointPassword(endpoint: string | undefined): string | undefined {
  try {
    return endpoint ? decodeURIComponent(new URL(endpoint).password) : undefined;
  } catch {
    return undefined;
  }
}

/** The network error code (ECONNREFUSED, ...) somewhere in an error, its causes or aggregated errors. */
function networkCode(error: SdkError | undefined, depth = 0): string | undefined {
  if (!error || depth > 4) return undefined;
  for (const candidate of [error.code, error.name]) {
    if (candidate && NETWORK_CODES.has(candidate)) return candidate === 'TimeoutError' || candidate === 'RequestTimeout' ? 'no answer in time' : candidate;
  }
  for (const inner of [error.cause, ...(error.errors ?? [])]) {
    const code = networkCode(inner, depth + 1);
    if (code) return code;
  }
  return undefined;
}

/**
 * Backups as objects in an S3 bucket (AWS or any S3-compatible server). Puts stream through a multipart upload
 * (lib-storage's Upload) with bounded memory; an upload that fails is aborted, so no object and no parts stay.
 * Errors name the endpoint and bucket, never the credentials.
 */
export class S3BackupStore implements BackupStore {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly where: string;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly secrets: string[];

  constructor(options: S3StoreOptions) {
    if (!options.bucket) throw new Error('an S3 backup store needs a bucket');
    if (!options.accessKeyId !== !options.secretAccessKey)
      throw new Error('an S3 backup store needs both an access key id and a secret access key, or neither');
    const region = options.region || 'us-east-1';
    this.bucket = options.bucket;
    this.prefix = !options.prefix ? '' : options.prefix.endsWith('/') ? options.prefix : `${options.prefix}/`;
    if (this.prefix) checkStorePrefix(this.prefix);
    this.where = printableEndpoint(options.endpoint, region);
    this.partSize = Math.max(MIN_PART_BYTES, options.partSizeBytes ?? 8 * 1024 * 1024);
    this.queueSize = Math.max(1, options.queueSize ?? 2);
    this.secrets = [options.secretAccessKey, endpointPassword(options.endpoint)].filter((s): s is string => !!s && s.length >= 4);
    this.client = new S3Client({
      region,
      endpoint: options.endpoint,
      forcePathStyle: options.forcePathStyle ?? !!options.endpoint,
      credentials: options.accessKeyId ? { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey! } : undefined,
      // Checksums only where S3 requires them: many S3-compatible servers do not understand the newer trailing
      // checksums. Integrity is the backup format's own business (AES-GCM per chunk, SHA-256 of the object).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: options.maxAttempts ?? 3,
      requestHandler: { connectionTimeout: options.connectTimeoutMs ?? 5000, requestTimeout: options.idleTimeoutMs ?? 120_000 },
    });
  }

  describe(): string {
    return `S3 bucket ${this.bucket}${this.prefix ? ` (prefix ${this.prefix})` : ''} at ${this.where}`;
  }

  /** Closes the client's connections. */
  destroy(): void {
    this.client.destroy();
  }

  private scrub(text: string): string {
    return this.secrets.reduce((result, secret) => result.split(secret).join('***'), text);
  }

  private fail(action: string, error: unknown): BackupStoreError {
    if (error instanceof BackupStoreError) return error;
    const sdk = error as SdkError;
    const status = sdk.$metadata?.httpStatusCode;
    const code = networkCode(sdk);
    if (code) return new BackupStoreError('unreachable', `S3 endpoint ${this.where} did not answer: ${code} (${action})`);
    if (sdk.name === 'NoSuchBucket') return new BackupStoreError('no-bucket', `bucket ${this.bucket} does not exist at ${this.where}`);
    if (
      ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden', 'InvalidToken', 'ExpiredToken'].includes(sdk.name ?? '') ||
      status === 403
    ) {
      return new BackupStoreError(
        'access-denied',
        `${this.where} refused access to bucket ${this.bucket} (${sdk.name ?? status}): check the access key id and secret access key (${action})`,
      );
    }
    const detail = this.scrub(`${sdk.name ?? 'Error'}${status ? ` (HTTP ${status})` : ''}: ${sdk.message ?? String(error)}`);
    return new BackupStoreError('failed', `${action} in ${this.describe()} failed: ${detail}`);
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<{ bytes: number }> {
    checkStoreKey(key);
    const counter = new ByteCounter();
    let bodyError: Error | undefined;
    body.once('error', (error: Error) => {
      bodyError = error;
      counter.destroy(error);
    });
    body.pipe(counter);
    const partSize = Math.max(this.partSize, Math.ceil((options.sizeHint ?? 0) / (MAX_PARTS - 100)));
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: this.prefix + key, Body: counter, ContentType: 'application/octet-stream' },
      partSize,
      queueSize: this.queueSize,
      leavePartsOnError: false,
    });
    const onAbort = () => void upload.abort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      options.signal?.throwIfAborted();
      await upload.done();
      return { bytes: counter.bytes };
    } catch (error) {
      body.unpipe(counter);
      if (!body.destroyed) body.destroy();
      options.signal?.throwIfAborted();
      if (bodyError !== undefined) throw bodyError;
      throw this.fail(`writing backup ${key}`, error);
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  async get(key: string): Promise<Readable> {
    checkStoreKey(key);
    try {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
      if (!(answer.Body instanceof Readable)) throw new Error('the S3 client did not answer with a stream');
      return answer.Body;
    } catch (error) {
      const sdk = error as SdkError;
      if (sdk.name === 'NoSuchKey' || (sdk.name !== 'NoSuchBucket' && sdk.$metadata?.httpStatusCode === 404)) {
        throw new BackupStoreError('not-found', `backup ${key} does not exist in ${this.describe()}`);
      }
      throw this.fail(`reading backup ${key}`, error);
    }
  }

  async delete(key: string): Promise<void> {
    checkStoreKey(key);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
    } catch (error) {
      if ((error as SdkError).name === 'NoSuchKey') return;
      throw this.fail(`deleting backup ${key}`, error);
    }
  }

  async list(prefix = ''): Promise<StoredObject[]> {
    checkStorePrefix(prefix);
    const found: StoredObject[] = [];
    try {
      for await (const page of paginateListObjectsV2({ client: this.client }, { Bucket: this.bucket, Prefix: this.prefix + prefix })) {
        for (const object of page.Contents ?? []) {
          if (!object.Key?.startsWith(this.prefix)) continue;
          found.push({ key: object.Key.slice(this.prefix.length), bytes: object.Size ?? 0, modified: object.LastModified ?? new Date(0) });
        }
      }
    } catch (error) {
      throw this.fail(`listing backups${prefix ? ` under ${prefix}` : ''}`, error);
    }
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}
