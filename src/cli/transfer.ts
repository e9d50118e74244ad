import { Transform, type TransformCallback } from 'node:stream';

/** Where progress goes: a line rewritten in place on a terminal, or a line of its own every few seconds elsewhere. */
export interface ProgressSink {
  progress(text: string): void;
  /** True when progress lines overwrite each other (a terminal), so they may come often. */
  readonly progressInPlace: boolean;
}

const MB = 1_000_000;

/** "12.3 MB"; decimal units, as transfer rates are usually given. */
export function megabytes(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < MB) return `${(bytes / 1000).toFixed(1)} kB`;
  return `${(bytes / MB).toFixed(bytes < 100 * MB ? 1 : 0)} MB`;
}

export function seconds(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

/** "12.3 MB/s" for bytes moved in ms; a transfer too short to measure says so rather than divide by zero. */
export function rate(bytes: number, ms: number): string {
  return ms < 1 ? 'instantly' : `${(bytes / MB / (ms / 1000)).toFixed(1)} MB/s`;
}

/**
 * Counts the bytes that flow through it and reports them (bytes, percentage of a known total, rate) to a sink,
 * throttled: four times a second on a terminal, every five seconds otherwise. It never holds data back.
 */
export class ByteCounter extends Transform {
  bytes = 0;
  private readonly started = Date.now();
  private shownAt = 0;

  constructor(
    private readonly label: string,
    private readonly sink: ProgressSink | undefined,
    private readonly total?: number,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    const now = Date.now();
    if (this.sink && now - this.shownAt >= (this.sink.progressInPlace ? 250 : 5000)) {
      this.shownAt = now;
      this.sink.progress(this.line());
    }
    callback(null, chunk);
  }

  /** Milliseconds since the counter was made. */
  get elapsedMs(): number {
    return Date.now() - this.started;
  }

  /** Removes the in-place line (a terminal), so the summary that follows starts on a clean line. */
  clear(): void {
    if (this.sink?.progressInPlace && this.shownAt > 0) this.sink.progress('');
  }

  summary(): string {
    return `${megabytes(this.bytes)} in ${seconds(this.elapsedMs)} (${rate(this.bytes, this.elapsedMs)})`;
  }

  private line(): string {
    const share = this.total ? ` of ${megabytes(this.total)} (${Math.min(100, Math.floor((this.bytes / this.total) * 100))} %)` : '';
    return `${this.label} ${megabytes(this.bytes)}${share}, ${rate(this.bytes, this.elapsedMs)}`;
  }
}
