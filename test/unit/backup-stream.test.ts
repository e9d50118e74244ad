import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import {
  BackupFormatError,
  backupKeyId,
  DEFAULT_CHUNK_BYTES,
  deriveBackupKey,
  HEADER_BYTES,
  openStream,
  sealStream,
  type BackupStream,
  type SealOptions,
} from '../../src/backups/seal-stream.js';

const KEY = randomBytes(32);
const FRAME_OVERHEAD = 5 + 16;

/** The input cut into pieces of uneven sizes, as a dump arrives from a process. */
function pieces(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0, size = 1; at < data.length; at += size, size = (size * 7 + 13) % 100_003 || 1) out.push(data.subarray(at, at + size));
  return out;
}

async function run(input: Buffer, through: BackupStream): Promise<Buffer> {
  const out: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      out.push(chunk);
      callback();
    },
  });
  await pipeline(Readable.from(pieces(input)), through.stream, sink);
  return Buffer.concat(out);
}

const seal = (data: Buffer, options?: SealOptions, key = KEY) => run(data, sealStream(key, options));
const open = (stored: Buffer, key = KEY, context?: string) => run(stored, openStream(key, { context }));

/** Offsets of each chunk frame in a stored backup. */
function frames(stored: Buffer): Array<{ start: number; end: number; final: boolean }> {
  const found = [];
  for (let at = HEADER_BYTES; at < stored.length;) {
    const length = stored.readUInt32BE(at);
    const end = at + 5 + length + 16;
    found.push({ start: at, end, final: stored[at + 4] === 1 });
    at = end;
  }
  return found;
}

async function problemOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  if (!(error instanceof BackupFormatError)) throw new Error(`expected a BackupFormatError, got ${String(error)}`);
  return error.problem;
}

for (const [name, size] of [
  ['0 bytes', 0],
  ['1 byte', 1],
  ['exactly one chunk of dump', DEFAULT_CHUNK_BYTES],
  ['many chunks', 1_500_000],
] as const) {
  test(`round trip of random data: ${name}`, async (t) => {
    const data = randomBytes(size);
    const sealing = sealStream(KEY, { context: 'instance-1/backup-1' });
    const stored = await run(data, sealing);
    const opening = openStream(KEY, { context: 'instance-1/backup-1' });
    const back = await run(stored, opening);
    t.true(back.equals(data));
    const sealed = sealing.summary();
    t.is(sealed.plainBytes, size);
    t.is(sealed.storedBytes, stored.length);
    t.is(sealed.sha256, createHash('sha256').update(stored).digest('hex'));
    t.is(sealed.keyId, backupKeyId(KEY));
    t.is(sealed.chunks, frames(stored).length);
    t.deepEqual(opening.summary(), sealed);
    t.deepEqual(
      frames(stored).map((frame) => frame.final),
      frames(stored).map((_, index, all) => index === all.length - 1),
    );
  });
}

test('round trip where the compressed stream fills whole chunks exactly (the final chunk is full)', async (t) => {
  const data = randomBytes(20_000);
  const compressed = gzipSync(data, { level: 1 }).length;
  // A chunk size dividing the compressed length: the last chunk ends exactly at a chunk boundary.
  const chunkBytes = [...Array(compressed).keys()].map((n) => compressed - n).find((n) => n < compressed / 3 && compressed % n === 0)!;
  t.truthy(chunkBytes, `no divisor for ${compressed}`);
  const sealing = sealStream(KEY, { chunkBytes });
  const stored = await run(data, sealing);
  t.is(sealing.summary().chunks, compressed / chunkBytes);
  t.is(stored.length, HEADER_BYTES + compressed + (compressed / chunkBytes) * FRAME_OVERHEAD);
  t.true((await open(stored)).equals(data));
  // And a chunk size equal to the whole compressed stream: one full, final chunk.
  const single = sealStream(KEY, { chunkBytes: compressed });
  const storedSingle = await run(data, single);
  t.is(single.summary().chunks, 1);
  t.true((await open(storedSingle)).equals(data));
});

test('text round trip with a non-ASCII context; the stored bytes do not contain the plain text', async (t) => {
  const marker = 'SECRET-MARKER-4f1c9e';
  const data = Buffer.from(Array.from({ length: 5000 }, (_, n) => `INSERT INTO t VALUES (${n}, '${marker}');\n`).join(''));
  const stored = await seal(data, { context: 'инстанс/ü' });
  t.false(stored.includes(marker));
  t.false(stored.includes('INSERT'));
  t.true(stored.length < data.length / 5, 'compressed');
  t.true((await open(stored, KEY, 'инстанс/ü')).equals(data));
});

test('gzip level 0 (a dump compressed already): stored blocks, barely larger than the dump, and it opens the same way', async (t) => {
  const compressed = randomBytes(700_000); // as incompressible as pg_dump's custom format
  const stored = await seal(compressed, { gzipLevel: 0, context: 'i/b' });
  t.true(stored.length < compressed.length * 1.01 + 4096, `stored ${stored.length} bytes for ${compressed.length}`);
  t.false(stored.includes(compressed.subarray(1000, 1064)), 'the dump is not in the stored form');
  t.deepEqual(await open(stored, KEY, 'i/b'), compressed);
  // Level 1 spends CPU for nothing on such a dump: it is no smaller.
  t.true((await seal(compressed, { gzipLevel: 1 })).length >= stored.length - 4096);
});

test('a different broker key fails with wrong-key, naming both key ids', async (t) => {
  const stored = await seal(randomBytes(1000));
  const other = randomBytes(32);
  const error = await t.throwsAsync(open(stored, other), { instanceOf: BackupFormatError });
  t.is(error.problem, 'wrong-key');
  t.true(error.message.includes(backupKeyId(KEY)) && error.message.includes(backupKeyId(other)), error.message);
});

test('another context fails with wrong-context', async (t) => {
  const stored = await seal(randomBytes(1000), { context: 'instance-1/backup-1' });
  t.is(await problemOf(open(stored, KEY, 'instance-2/backup-1')), 'wrong-context');
  t.is(await problemOf(open(stored)), 'wrong-context');
});

test('a flipped bit anywhere (header, chunk heads, ciphertext, tags) fails', async (t) => {
  const stored = await seal(randomBytes(3000), { chunkBytes: 1000 });
  t.is(frames(stored).length, 4);
  const problems = new Set<string>();
  for (let at = 0; at < stored.length; at++) {
    const damaged = Buffer.from(stored);
    damaged[at]! ^= 1 << (at % 8);
    const problem = await problemOf(open(damaged));
    problems.add(problem);
    if (at >= HEADER_BYTES) t.true(problem === 'corrupt' || problem === 'truncated', `byte ${at}: ${problem}`);
  }
  t.log('problems seen:', [...problems].join(', '));
  t.true(problems.has('corrupt') && problems.has('not-a-backup') && problems.has('wrong-key'));
});

test('the error of a damaged chunk names the chunk', async (t) => {
  const stored = await seal(randomBytes(3000), { chunkBytes: 1000 });
  const second = frames(stored)[1]!;
  stored[second.start + 100]! ^= 0x40;
  const error = await t.throwsAsync(open(stored), { instanceOf: BackupFormatError });
  t.regex(error.message, /damaged or was tampered with: chunk 1 \(from byte \d+\) fails authentication/);
});

test('truncation fails everywhere, also exactly at each chunk boundary', async (t) => {
  const stored = await seal(randomBytes(5000), { chunkBytes: 1000 });
  const all = frames(stored);
  const cuts = new Set([0, 1, 7, 8, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 3, stored.length - 1, stored.length - 16]);
  for (const frame of all) [frame.start, frame.start + 5, frame.end - 1].forEach((cut) => cuts.add(cut));
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    if (cut >= stored.length) continue;
    const problem = await problemOf(open(stored.subarray(0, cut)));
    t.true(cut === 0 ? problem === 'not-a-backup' : problem === 'truncated', `cut at ${cut}: ${problem}`);
  }
  // Every chunk boundary but the end: the final chunk is missing.
  for (const frame of all.slice(0, -1)) {
    const error = await t.throwsAsync(open(stored.subarray(0, frame.end)), { instanceOf: BackupFormatError });
    t.regex(error.message, /truncated.*without its final chunk/);
  }
});

test('dropping the final chunk and marking the one before as final fails', async (t) => {
  const stored = await seal(randomBytes(3000), { chunkBytes: 1000 });
  const all = frames(stored);
  const cut = Buffer.from(stored.subarray(0, all.at(-2)!.end));
  cut[all.at(-2)!.start + 4] = 1;
  t.is(await problemOf(open(cut)), 'corrupt');
});

test('two chunks swapped fail; a chunk spliced in from another backup fails', async (t) => {
  const stored = await seal(randomBytes(4000), { chunkBytes: 1000 });
  const [, a, b] = frames(stored);
  const swapped = Buffer.concat([stored.subarray(0, a!.start), stored.subarray(b!.start, b!.end), stored.subarray(a!.start, a!.end), stored.subarray(b!.end)]);
  t.is(swapped.length, stored.length);
  t.is(await problemOf(open(swapped)), 'corrupt');

  const other = await seal(randomBytes(4000), { chunkBytes: 1000 });
  const [, otherA] = frames(other);
  const spliced = Buffer.concat([stored.subarray(0, a!.start), other.subarray(otherA!.start, otherA!.end), stored.subarray(a!.end)]);
  t.is(await problemOf(open(spliced)), 'corrupt');
});

test('data after the final chunk fails', async (t) => {
  const stored = await seal(randomBytes(100));
  t.is(await problemOf(open(Buffer.concat([stored, Buffer.from([0])]))), 'corrupt');
  t.is(await problemOf(open(Buffer.concat([stored, stored]))), 'corrupt');
});

test('files that are not backups fail with not-a-backup', async (t) => {
  t.is(await problemOf(open(Buffer.alloc(0))), 'not-a-backup');
  t.is(await problemOf(open(Buffer.from('-- PostgreSQL database dump\nSET statement_timeout = 0;\n'))), 'not-a-backup');
  t.is(await problemOf(open(gzipSync(Buffer.from('hello')))), 'not-a-backup');
  t.is(await problemOf(open(randomBytes(10_000))), 'not-a-backup');
  t.is(await problemOf(open(Buffer.from('OSB-BKUX and more'))), 'not-a-backup');
  t.is(await problemOf(open(Buffer.from('OSB'))), 'truncated'); // could be the start of one
  const error = await t.throwsAsync(open(Buffer.from('{"not":"a backup"}')), { instanceOf: BackupFormatError });
  t.regex(error.message, /not a backup written by this broker/);
});

test('another format version fails with unsupported-version', async (t) => {
  const stored = await seal(randomBytes(100));
  stored[8] = 2;
  const error = await t.throwsAsync(open(stored), { instanceOf: BackupFormatError });
  t.is(error.problem, 'unsupported-version');
  t.regex(error.message, /version 2 is not supported/);
});

test('each backup has its own data key, salt and nonce prefix; the key id names the broker key only', async (t) => {
  const data = randomBytes(500);
  const [one, two] = await Promise.all([seal(data), seal(data)]);
  t.false(one.subarray(24, 44).equals(two.subarray(24, 44)));
  t.false(one.subarray(HEADER_BYTES).equals(two.subarray(HEADER_BYTES)));
  t.true(one.subarray(16, 24).equals(two.subarray(16, 24)));
  t.is(backupKeyId(KEY), backupKeyId(Buffer.from(KEY)));
  t.not(backupKeyId(KEY), backupKeyId(randomBytes(32)));
  t.false(deriveBackupKey(KEY, randomBytes(16)).equals(deriveBackupKey(KEY, randomBytes(16))));
  t.throws(() => sealStream(randomBytes(16)), { message: /32 bytes/ });
  t.throws(() => sealStream(KEY, { chunkBytes: 0 }), { message: /chunkBytes/ });
});

test('summary() throws until the stream has ended', (t) => {
  t.throws(() => sealStream(KEY).summary(), { message: /not ended/ });
  t.throws(() => openStream(KEY).summary(), { message: /not ended/ });
});

/** A dump-like stream of `total` bytes: alternately incompressible and text-like 64 KiB pieces, made on the fly. */
function generatedDump(total: number): Readable {
  const noise = randomBytes(1 << 20);
  const text = Buffer.from(Array.from({ length: 3000 }, (_, n) => `INSERT INTO t VALUES (${n}, 'row ${n % 977}', ${(n * 7919) % 100_003});\n`).join(''));
  let sent = 0;
  let index = 0;
  return new Readable({
    read() {
      if (sent >= total) return void this.push(null);
      index++;
      const size = Math.min(65_536, total - sent);
      const piece = index % 2 ? noise.subarray((index * 4099) % (noise.length - size)).subarray(0, size) : text.subarray(index % 1000, (index % 1000) + size);
      sent += piece.length;
      this.push(piece);
    },
  });
}

// Serial: runs before this file's other tests start, so their buffers do not count against it.
test.serial('200 MB sealed and opened again in one stream pass: memory stays bounded', async (t) => {
  const total = 200 * 1024 * 1024;
  const sealing = sealStream(KEY, { context: 'big' });
  const opening = openStream(KEY, { context: 'big' });
  const check = createHash('sha256');
  let opened = 0;
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      opened += chunk.length;
      check.update(chunk);
      callback();
    },
  });
  const expected = createHash('sha256');
  const source = generatedDump(total);
  source.on('data', (chunk: Buffer) => expected.update(chunk));
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  const started = performance.now();
  try {
    await pipeline(source, sealing.stream, opening.stream, sink);
  } finally {
    clearInterval(sampler);
  }
  const seconds = (performance.now() - started) / 1000;
  peak = Math.max(peak, process.memoryUsage().rss);
  const growthMb = (peak - before) / 1024 / 1024;
  t.log(
    `sealed and opened ${total / 1024 / 1024} MB in ${seconds.toFixed(1)} s (${(total / 1024 / 1024 / seconds).toFixed(0)} MB/s), stored ${(sealing.summary().storedBytes / 1024 / 1024).toFixed(0)} MB in ${sealing.summary().chunks} chunks; rss ${(before / 1024 / 1024).toFixed(0)} MB, peak growth ${growthMb.toFixed(0)} MB`,
  );
  t.is(opened, total);
  t.is(sealing.summary().plainBytes, total);
  t.is(check.digest('hex'), expected.digest('hex'));
  t.is(opening.summary().sha256, sealing.summary().sha256);
  t.true(growthMb < 100, `rss grew by ${growthMb.toFixed(0)} MB`);
});
