// Streaming exec against the real engine: what backups and restores ride on.
import test from 'ava';
import Docker from 'dockerode';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { ExecDemux } from '../src/docker/exec-frames.js';
import { engine } from './helpers/env.js';

const name = `osb-test-exec-${randomBytes(4).toString('hex')}`;

test.before(async () => {
  const container = await new Docker().createContainer({
    name,
    Image: 'osb-base/debian:bookworm',
    Cmd: ['sleep', 'infinity'],
    Labels: { 'io.osb-broker.role': 'test-exec' },
  });
  await container.start();
});
test.after.always(() => engine.removeContainer(name));

const frame = (kind: 1 | 2, payload: Buffer) => {
  const header = Buffer.alloc(8);
  header[0] = kind;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
};

test('frames split anywhere are put together; stdout passes on, stderr is kept', async (t) => {
  const stream = Buffer.concat([frame(1, Buffer.from('hello ')), frame(2, Buffer.from('warning\n')), frame(1, Buffer.from('world'))]);
  for (const size of [1, 3, 8, 9, stream.length]) {
    const demux = new ExecDemux();
    const pieces: Buffer[] = [];
    for (let offset = 0; offset < stream.length; offset += size) pieces.push(stream.subarray(offset, offset + size));
    const out: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      Readable.from(pieces)
        .pipe(demux)
        .on('data', (chunk: Buffer) => out.push(chunk))
        .on('end', resolve)
        .on('error', reject);
    });
    t.is(Buffer.concat(out).toString(), 'hello world', `pieces of ${size} bytes`);
    t.is(demux.stderr, 'warning\n');
  }
  const cut = new ExecDemux();
  cut.resume();
  await t.throwsAsync(
    () =>
      new Promise((resolve, reject) =>
        Readable.from([stream.subarray(0, 10)])
          .pipe(cut)
          .on('end', resolve)
          .on('error', reject),
      ),
    { message: /middle of a frame/ },
  );
});

test('100 MB of stdout stream through with bounded memory; stdin reaches the command; a failure gives its exit code and stderr', async (t) => {
  const before = process.memoryUsage().rss;
  const big = await engine.execStream(name, ['sh', '-c', 'head -c 100000000 /dev/zero']);
  let bytes = 0;
  let peak = 0;
  for await (const chunk of big.stdout) {
    bytes += (chunk as Buffer).length;
    peak = Math.max(peak, process.memoryUsage().rss - before);
  }
  t.is(bytes, 100_000_000);
  t.deepEqual(await big.finished, { exitCode: 0, stderr: '' });
  t.true(peak < 80 * 1024 * 1024, `memory grew by ${Math.round(peak / 1024 / 1024)} MiB`);

  const input = randomBytes(5_000_000);
  const counted = await engine.execStream(name, ['sh', '-c', 'sha256sum | cut -d" " -f1'], { input: Readable.from([input]) });
  const out: Buffer[] = [];
  for await (const chunk of counted.stdout) out.push(chunk as Buffer);
  t.is(Buffer.concat(out).toString().trim(), createHash('sha256').update(input).digest('hex'));
  t.is((await counted.finished).exitCode, 0);

  const failing = await engine.execStream(name, ['sh', '-c', 'echo partial; echo "it broke" >&2; exit 3']);
  failing.stdout.resume();
  t.deepEqual(await failing.finished, { exitCode: 3, stderr: 'it broke\n' });
});
