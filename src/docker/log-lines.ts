import type { LogLine } from './types.js';

/** Splits the engine's multiplexed log format (8-byte frame headers: stream, 0, 0, 0, size) into lines. */
export function demuxLogs(buffer: Buffer): LogLine[] {
  const pending = { stdout: '', stderr: '' };
  const lines: LogLine[] = [];
  let offset = 0;
  while (offset + 8 <= buffer.length) {
    const kind = buffer[offset] === 2 ? 'stderr' : 'stdout';
    const size = buffer.readUInt32BE(offset + 4);
    pending[kind] += buffer.subarray(offset + 8, offset + 8 + size).toString('utf8');
    offset += 8 + size;
    const parts = pending[kind].split('\n');
    pending[kind] = parts.pop()!;
    for (const part of parts) lines.push(parseLogLine(kind, part));
  }
  for (const kind of ['stdout', 'stderr'] as const) if (pending[kind]) lines.push(parseLogLine(kind, pending[kind]));
  return lines;
}

export function parseLogLine(stream: 'stdout' | 'stderr', raw: string): LogLine {
  const space = raw.indexOf(' ');
  const stamp = space > 0 ? raw.slice(0, space) : '';
  return /^\d{4}-\d\d-\d\dT/.test(stamp)
    ? { stream, time: stamp, text: raw.slice(space + 1).replace(/\r$/, '') }
    : { stream, time: '', text: raw.replace(/\r$/, '') };
}
