import { pino, type DestinationStream, type Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';

export type { Logger };

/**
 * pino's ISO timestamp, made once per millisecond: under load many lines share one, and formatting a Date was a
 * noticeable part of each access-log line.
 */
function isoTimeOncePerMs(): () => string {
  let last = -1;
  let text = '';
  return () => {
    const now = Date.now();
    if (now !== last) {
      last = now;
      text = `,"time":"${new Date(now).toISOString()}"`;
    }
    return text;
  };
}

/** JSON logs on stdout. Anything that looks like a secret is censored even if a caller passes it by mistake. */
export function createLogger(level: string, base: Record<string, unknown> = {}, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'osb-docker-broker', ...base },
    timestamp: isoTimeOncePerMs(),
    redact: {
      paths: [
        'password',
        '*.password',
        '*.*.password',
        'credentials',
        '*.credentials',
        'authorization',
        '*.authorization',
        'req.headers.authorization',
        'env',
        '*.env',
      ],
      censor: '[redacted]',
    },
  };
  return pino(options, destination ?? logDestination(1));
}

/** How long a line may wait in memory before it is handed to the writer, and how much may wait. */
const CHUNK_MS = 50;
const CHUNK_CHARS = 65_536;

/** Chunks not yet handed to their writer, written out synchronously when the process exits. */
const waiting = new Set<ChunkedDestination>();
process.once('exit', () => {
  for (const destination of waiting) {
    try {
      destination.flushSync();
    } catch {
      // A file not open yet, or closed: nothing more can be written.
    }
  }
});

type SonicBoom = ReturnType<typeof pino.destination>;

/**
 * Lines gathered in memory and handed to SonicBoom's asynchronous writer as one chunk, within CHUNK_MS or once
 * CHUNK_CHARS are waiting. One line at a time cost more than the request it logged: SonicBoom measures its whole
 * pending buffer on every write, and each write it starts is a trip through libuv's thread pool.
 */
class ChunkedDestination implements DestinationStream {
  private lines: string[] = [];
  private chars = 0;
  private timer?: NodeJS.Timeout;

  constructor(private readonly writer: SonicBoom) {}

  write(line: string): void {
    this.lines.push(line);
    this.chars += line.length;
    if (this.chars >= CHUNK_CHARS) this.handOver();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.handOver(), CHUNK_MS);
      waiting.add(this);
    }
  }

  flush(callback?: (error?: Error) => void): void {
    this.handOver();
    this.writer.flush(callback);
  }

  flushSync(): void {
    this.handOver();
    this.writer.flushSync();
  }

  private handOver(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
      waiting.delete(this);
    }
    if (this.lines.length === 0) return;
    const chunk = this.lines.join('');
    this.lines = [];
    this.chars = 0;
    this.writer.write(chunk);
  }
}

/**
 * Where the broker's lines go: stdout (the benchmark passes /dev/null). Written asynchronously, since a synchronous
 * write per request was the largest cost of the hot paths, and in chunks (ChunkedDestination): a line reaches the
 * file within about 50 ms. Whatever waits is written at exit.
 */
export function logDestination(dest: number | string): DestinationStream {
  return new ChunkedDestination(pino.destination({ dest, sync: false }));
}

export type LogFormat = 'json' | 'pretty';

/**
 * Where the broker's own process logs: JSON lines (for CI, containers, systemd's journal and log collectors), or
 * lines for a person when stdout is a terminal, unless `format` says which. The pretty lines are made from the JSON
 * ones, so redaction applies to both alike.
 */
export function stdoutDestination(format: LogFormat | undefined, isTerminal = process.stdout.isTTY === true): DestinationStream {
  if ((format ?? (isTerminal ? 'pretty' : 'json')) === 'json') return logDestination(1);
  const pretty = prettyFactory({ translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service', singleLine: true });
  // Written at once: a person at a terminal reads the lines as they happen, and none waits in memory at exit.
  const writer = pino.destination({ dest: 1, sync: true });
  return { write: (line: string) => writer.write(pretty(line)) };
}
