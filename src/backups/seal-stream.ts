import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes, type Hash } from 'node:crypto';
import * as stream from 'node:stream';
import { Transform, type Duplex, type TransformCallback } from 'node:stream';
import { createGunzip, createGzip } from 'node:zlib';

/*
 * The stored form of a backup (format version 1): the dump is gzip-compressed, then cut into chunks that are each
 * sealed with AES-256-GCM.
 *
 *   header (52 bytes)
 *     0  magic "OSB-BKUP"          8 bytes
 *     8  format version            1 byte  (1)
 *     9  compression               1 byte  (1: gzip)
 *    10  reserved                  2 bytes (0)
 *    12  chunk size                4 bytes, big-endian: most plaintext bytes in one chunk
 *    16  key id                    8 bytes: HKDF of the broker key (names the key, reveals nothing of it)
 *    24  salt                      16 random bytes: HKDF salt of this backup's own data key
 *    40  nonce prefix              4 random bytes
 *    44  context id                8 bytes: the start of SHA-256(context), to name a mismatch clearly
 *   then chunks, each
 *     length                       4 bytes, big-endian: plaintext (= ciphertext) bytes, at most the chunk size
 *     flags                        1 byte: 1 on the final chunk, else 0
 *     ciphertext                   length bytes
 *     GCM tag                      16 bytes
 *
 * Data key: HKDF-SHA256(broker key, salt, "osb-broker backups v1"), so every backup has its own key. Chunk i's
 * nonce is the prefix followed by i (8 bytes, big-endian); its associated data is the whole header, SHA-256 of the
 * context, i and the final flag. A changed byte, chunks swapped or spliced in from another backup, and a stream cut
 * anywhere (also at a chunk boundary: the final chunk is missing) all fail authentication or the final-chunk check.
 * Every backup ends with exactly one final chunk, possibly empty.
 */

export const BACKUP_MAGIC = Buffer.from('OSB-BKUP', 'latin1');
export const BACKUP_FORMAT_VERSION = 1;
export const HEADER_BYTES = 52;
export const DEFAULT_CHUNK_BYTES = 64 * 1024;
/** A header may ask for chunks up to this size; larger is refused, so a reader's memory stays bounded. */
const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
const FRAME_HEAD_BYTES = 5;
const TAG_BYTES = 16;
const COMPRESSION_GZIP = 1;
const FLAG_FINAL = 1;
const DATA_KEY_INFO = 'osb-broker backups v1';
const KEY_ID_INFO = 'osb-broker backups v1 key id';

export type BackupFormatProblem = 'not-a-backup' | 'unsupported-version' | 'wrong-key' | 'wrong-context' | 'corrupt' | 'truncated';

/** A stored backup that cannot be opened: `problem` says why, the message says it in words. */
export class BackupFormatError extends Error {
  constructor(
    readonly problem: BackupFormatProblem,
    message: string,
  ) {
    super(message);
    this.name = 'BackupFormatError';
  }
}

function checkKey(key: Buffer): void {
  if (key.length !== 32) throw new Error('the backup key must be the broker encryption key: 32 bytes');
}

/** Names the broker key (16 hex digits) without revealing anything of it; written in every backup's header. */
export function backupKeyId(brokerKey: Buffer): string {
  checkKey(brokerKey);
  return Buffer.from(hkdfSync('sha256', brokerKey, Buffer.alloc(0), KEY_ID_INFO, 8)).toString('hex');
}

/** The AES-256-GCM key of one backup: HKDF-SHA256 of the broker key with the backup's salt. */
export function deriveBackupKey(brokerKey: Buffer, salt: Buffer): Buffer {
  checkKey(brokerKey);
  return Buffer.from(hkdfSync('sha256', brokerKey, salt, DATA_KEY_INFO, 32));
}

export interface SealOptions {
  /**
   * What this backup is, e.g. "<instance id>/<backup id>": bound into every chunk, so the object only opens with
   * the same context and cannot be passed off as another instance's backup. Default: empty.
   */
  context?: string;
  /** Plaintext bytes per sealed chunk (of the compressed stream). Default 64 KiB. */
  chunkBytes?: number;
  /**
   * gzip level, 1 (fastest) to 9 (smallest), or 0 for a dump that is compressed already: stored blocks, no CPU spent
   * on compressing again, and the same format to open. Default 1: several times faster than 6 for a dump a little larger.
   */
  gzipLevel?: number;
}

export interface OpenOptions {
  /** The context the backup was sealed with. Default: empty. */
  context?: string;
}

export interface StreamSummary {
  /** Backup format version of the header. */
  format: number;
  /** Key id of the broker key (see backupKeyId). */
  keyId: string;
  /** Bytes of the dump (before compression, after opening). */
  plainBytes: number;
  /** Bytes of the stored object, header included. */
  storedBytes: number;
  /** SHA-256 (hex) of the stored bytes. */
  sha256: string;
  /** Sealed chunks, the final one included. */
  chunks: number;
}

export interface BackupStream {
  /** Write the input in, read the output out; use it in stream.pipeline. Errors are BackupFormatErrors (opening). */
  stream: Duplex;
  /** Byte counts and the checksum of the stored bytes; throws until the stream has ended. */
  summary(): StreamSummary;
}

// stream.compose (Node >= 16.9) is missing from @types/node 20.
const compose = (stream as unknown as { compose: (...streams: Duplex[]) => Duplex }).compose;

/** Appended buffers, taken out again in pieces of any size. */
class ByteQueue {
  private parts: Buffer[] = [];
  length = 0;

  push(part: Buffer): void {
    if (part.length === 0) return;
    this.parts.push(part);
    this.length += part.length;
  }

  /** The next n bytes (n <= length). */
  take(n: number): Buffer {
    this.length -= n;
    const first = this.parts[0];
    if (n === 0 || !first) return Buffer.alloc(0);
    if (first.length === n) {
      this.parts.shift();
      return first;
    }
    if (first.length > n) {
      this.parts[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const part = this.parts[0]!;
      const count = Math.min(part.length, n - filled);
      part.copy(out, filled, 0, count);
      filled += count;
      if (count === part.length) this.parts.shift();
      else this.parts[0] = part.subarray(count);
    }
    return out;
  }

  peek(n: number): Buffer {
    const head = this.take(Math.min(n, this.length));
    this.parts.unshift(head);
    this.length += head.length;
    return head;
  }
}

function counterBytes(index: number): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeUInt32BE(Math.floor(index / 2 ** 32), 0);
  bytes.writeUInt32BE(index >>> 0, 4);
  return bytes;
}

function chunkNonce(prefix: Buffer, index: number): Buffer {
  return Buffer.concat([prefix, counterBytes(index)]);
}

function chunkAad(header: Buffer, contextHash: Buffer, index: number, final: boolean): Buffer {
  return Buffer.concat([header, contextHash, counterBytes(index), Buffer.from([final ? FLAG_FINAL : 0])]);
}

class ByteCounter extends Transform {
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}

class ChunkSealer extends Transform {
  private readonly queue = new ByteQueue();
  private readonly hash: Hash = createHash('sha256');
  private readonly header: Buffer;
  private readonly dataKey: Buffer;
  private readonly noncePrefix = randomBytes(4);
  private readonly contextHash: Buffer;
  private headerSent = false;
  storedBytes = 0;
  chunks = 0;
  sha256?: string;
  readonly keyId: string;

  constructor(
    brokerKey: Buffer,
    context: string,
    private readonly chunkBytes: number,
  ) {
    super();
    const salt = randomBytes(16);
    this.dataKey = deriveBackupKey(brokerKey, salt);
    this.keyId = backupKeyId(brokerKey);
    this.contextHash = createHash('sha256').update(context, 'utf8').digest();
    const header = Buffer.alloc(HEADER_BYTES);
    BACKUP_MAGIC.copy(header, 0);
    header.writeUInt8(BACKUP_FORMAT_VERSION, 8);
    header.writeUInt8(COMPRESSION_GZIP, 9);
    header.writeUInt32BE(chunkBytes, 12);
    Buffer.from(this.keyId, 'hex').copy(header, 16);
    salt.copy(header, 24);
    this.noncePrefix.copy(header, 40);
    this.contextHash.copy(header, 44, 0, 8);
    this.header = header;
  }

  private out(bytes: Buffer): void {
    this.hash.update(bytes);
    this.storedBytes += bytes.length;
    this.push(bytes);
  }

  private sendHeader(): void {
    if (this.headerSent) return;
    this.headerSent = true;
    this.out(this.header);
  }

  private seal(plain: Buffer, final: boolean): void {
    const index = this.chunks++;
    const cipher = createCipheriv('aes-256-gcm', this.dataKey, chunkNonce(this.noncePrefix, index), { authTagLength: TAG_BYTES });
    cipher.setAAD(chunkAad(this.header, this.contextHash, index, final));
    const head = Buffer.alloc(FRAME_HEAD_BYTES);
    head.writeUInt32BE(plain.length, 0);
    head.writeUInt8(final ? FLAG_FINAL : 0, 4);
    const body = cipher.update(plain);
    const rest = cipher.final();
    this.out(Buffer.concat([head, body, rest, cipher.getAuthTag()]));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.sendHeader();
    this.queue.push(chunk);
    // A full chunk is sealed as non-final only once more data follows it; the final chunk is sealed at the end.
    while (this.queue.length > this.chunkBytes) this.seal(this.queue.take(this.chunkBytes), false);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    this.sendHeader();
    while (this.queue.length > this.chunkBytes) this.seal(this.queue.take(this.chunkBytes), false);
    this.seal(this.queue.take(this.queue.length), true);
    this.sha256 = this.hash.digest('hex');
    callback();
  }
}

class ChunkOpener extends Transform {
  private readonly queue = new ByteQueue();
  private readonly hash: Hash = createHash('sha256');
  private readonly contextHash: Buffer;
  private readonly expectedKeyId: string;
  private header?: Buffer;
  private dataKey?: Buffer;
  private noncePrefix?: Buffer;
  private chunkBytes = 0;
  /** The frame whose body is awaited. */
  private frame?: { length: number; final: boolean };
  private finalSeen = false;
  storedBytes = 0;
  chunks = 0;
  format = 0;
  sha256?: string;

  constructor(
    private readonly brokerKey: Buffer,
    context: string,
  ) {
    super();
    this.expectedKeyId = backupKeyId(brokerKey);
    this.contextHash = createHash('sha256').update(context, 'utf8').digest();
  }

  get keyId(): string {
    return this.expectedKeyId;
  }

  private readHeader(): void {
    const magic = this.queue.peek(BACKUP_MAGIC.length);
    if (!magic.equals(BACKUP_MAGIC.subarray(0, magic.length))) {
      throw new BackupFormatError('not-a-backup', 'not a backup written by this broker: the file does not start with the backup header');
    }
    if (this.queue.length < HEADER_BYTES) return;
    const header = this.queue.take(HEADER_BYTES);
    const version = header.readUInt8(8);
    if (version !== BACKUP_FORMAT_VERSION) {
      throw new BackupFormatError(
        'unsupported-version',
        `backup format version ${version} is not supported (this broker reads version ${BACKUP_FORMAT_VERSION})`,
      );
    }
    const compression = header.readUInt8(9);
    const chunkBytes = header.readUInt32BE(12);
    if (compression !== COMPRESSION_GZIP || header.readUInt16BE(10) !== 0 || chunkBytes < 1 || chunkBytes > MAX_CHUNK_BYTES) {
      throw new BackupFormatError('corrupt', 'the backup header is damaged (unknown compression or chunk size)');
    }
    const keyId = header.subarray(16, 24).toString('hex');
    if (keyId !== this.expectedKeyId) {
      throw new BackupFormatError(
        'wrong-key',
        `the backup was sealed with another encryption key (key id ${keyId}; this broker's BROKER_ENCRYPTION_KEY has key id ${this.expectedKeyId})`,
      );
    }
    if (!header.subarray(44, 52).equals(this.contextHash.subarray(0, 8))) {
      throw new BackupFormatError('wrong-context', 'the backup belongs to another instance or backup than the one it is being opened as');
    }
    this.format = version;
    this.chunkBytes = chunkBytes;
    this.dataKey = deriveBackupKey(this.brokerKey, header.subarray(24, 40));
    this.noncePrefix = Buffer.from(header.subarray(40, 44));
    this.header = Buffer.from(header);
  }

  private open(body: Buffer, final: boolean): Buffer {
    const index = this.chunks;
    const decipher = createDecipheriv('aes-256-gcm', this.dataKey!, chunkNonce(this.noncePrefix!, index), { authTagLength: TAG_BYTES });
    decipher.setAAD(chunkAad(this.header!, this.contextHash, index, final));
    decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
    try {
      const plain = Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BYTES)), decipher.final()]);
      this.chunks++;
      return plain;
    } catch {
      throw new BackupFormatError(
        'corrupt',
        `the backup is damaged or was tampered with: chunk ${index} (from byte ${this.storedBytes - this.queue.length - body.length - FRAME_HEAD_BYTES}) fails authentication`,
      );
    }
  }

  /** Everything that can be read from the queue now. */
  private drain(): void {
    for (;;) {
      if (!this.header) {
        if (this.queue.length === 0) return;
        this.readHeader();
        if (!this.header) return;
        continue;
      }
      if (this.finalSeen) {
        if (this.queue.length > 0) throw new BackupFormatError('corrupt', 'the backup has data after its final chunk');
        return;
      }
      if (!this.frame) {
        if (this.queue.length < FRAME_HEAD_BYTES) return;
        const head = this.queue.take(FRAME_HEAD_BYTES);
        const length = head.readUInt32BE(0);
        const flags = head.readUInt8(4);
        if (length > this.chunkBytes || (flags & ~FLAG_FINAL) !== 0) {
          throw new BackupFormatError('corrupt', `the backup is damaged or was tampered with: chunk ${this.chunks} has an impossible length or flags`);
        }
        this.frame = { length, final: flags === FLAG_FINAL };
      }
      if (this.queue.length < this.frame.length + TAG_BYTES) return;
      const { length, final } = this.frame;
      this.frame = undefined;
      const plain = this.open(this.queue.take(length + TAG_BYTES), final);
      if (final) this.finalSeen = true;
      if (plain.length > 0) this.push(plain);
    }
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.storedBytes += chunk.length;
    this.queue.push(chunk);
    try {
      this.drain();
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.drain();
      if (this.storedBytes === 0) throw new BackupFormatError('not-a-backup', 'not a backup: the object is empty');
      if (!this.header || !this.finalSeen) {
        throw new BackupFormatError(
          'truncated',
          `the backup is truncated: it ends after ${this.storedBytes} bytes${this.header ? `, ${this.chunks} chunks,` : ''} without its final chunk`,
        );
      }
      this.sha256 = this.hash.digest('hex');
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }
}

function checkedChunkBytes(value: number | undefined): number {
  const chunkBytes = value ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isInteger(chunkBytes) || chunkBytes < 1 || chunkBytes > MAX_CHUNK_BYTES) {
    throw new Error(`chunkBytes must be an integer from 1 to ${MAX_CHUNK_BYTES}`);
  }
  return chunkBytes;
}

/**
 * Compresses and seals a dump: write the plain dump in, read the stored form out. Memory stays bounded (a chunk
 * and the streams' buffers). `brokerKey` is the broker's 32-byte BROKER_ENCRYPTION_KEY; each backup gets its own
 * data key from it.
 */
export function sealStream(brokerKey: Buffer, options: SealOptions = {}): BackupStream {
  const counter = new ByteCounter();
  const gzip = createGzip({ level: options.gzipLevel ?? 1, chunkSize: 64 * 1024 });
  const sealer = new ChunkSealer(brokerKey, options.context ?? '', checkedChunkBytes(options.chunkBytes));
  return {
    stream: compose(counter, gzip, sealer),
    summary() {
      if (sealer.sha256 === undefined) throw new Error('the backup stream has not ended yet');
      return {
        format: BACKUP_FORMAT_VERSION,
        keyId: sealer.keyId,
        plainBytes: counter.bytes,
        storedBytes: sealer.storedBytes,
        sha256: sealer.sha256,
        chunks: sealer.chunks,
      };
    },
  };
}

/**
 * Verifies, decrypts and decompresses a stored backup: write the stored form in, read the dump out. Each chunk is
 * authenticated before any of its bytes are passed on; the stream fails with a BackupFormatError on another key,
 * another context, a changed byte, a missing final chunk, or a file that is no backup. Bytes already passed on
 * before such an error were authentic, but the restore must still be treated as failed.
 */
export function openStream(brokerKey: Buffer, options: OpenOptions = {}): BackupStream {
  const opener = new ChunkOpener(brokerKey, options.context ?? '');
  const gunzip = createGunzip({ chunkSize: 64 * 1024 });
  const counter = new ByteCounter();
  let ended = false;
  counter.once('finish', () => (ended = true));
  return {
    stream: compose(opener, gunzip, counter),
    summary() {
      if (opener.sha256 === undefined || !ended) throw new Error('the backup stream has not ended yet');
      return {
        format: opener.format,
        keyId: opener.keyId,
        plainBytes: counter.bytes,
        storedBytes: opener.storedBytes,
        sha256: opener.sha256,
        chunks: opener.chunks,
      };
    },
  };
}
