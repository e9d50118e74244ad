import { Transform, type TransformCallback } from 'node:stream';

/** How much of a command's stderr is kept for its error message. */
const STDERR_KEEP_BYTES = 64 * 1024;

/**
 * Splits the engine's multiplexed exec stream (8-byte frame headers: stream, 0, 0, 0, size) as it flows: stdout
 * payload passes on with backpressure, so a dump of gigabytes never piles up in memory; stderr is kept (its last
 * 64 KiB) for the error message.
 */
export class ExecDemux extends Transform {
  private pending = Buffer.alloc(0);
  private readonly errors: Buffer[] = [];
  private errorBytes = 0;

  get stderr(): string {
    return Buffer.concat(this.errors).toString('utf8');
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    let buffer = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    while (buffer.length >= 8) {
      const size = buffer.readUInt32BE(4);
      if (buffer.length < 8 + size) break;
      const payload = buffer.subarray(8, 8 + size);
      if (buffer[0] === 2) this.keepError(payload);
      else if (payload.length) this.push(payload);
      buffer = buffer.subarray(8 + size);
    }
    this.pending = Buffer.from(buffer);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    callback(this.pending.length ? new Error('the exec stream ended in the middle of a frame') : undefined);
  }

  private keepError(payload: Buffer): void {
    this.errors.push(Buffer.from(payload));
    this.errorBytes += payload.length;
    while (this.errorBytes > STDERR_KEEP_BYTES && this.errors.length > 1) this.errorBytes -= this.errors.shift()!.length;
  }
}
