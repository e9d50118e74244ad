// The backup stores: a local folder, and S3 spoken to a real S3 API server on loopback. That server is s3rver, an
// npm package that stands in for S3 (or MinIO and the like) in these tests only; the broker never uses it.
import test from 'ava';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import S3rver from 's3rver';
import {
  backupsToDelete,
  BackupStoreError,
  createBackupStore,
  getOpened,
  LocalBackupStore,
  loadBackupConfig,
  openStream,
  putSealed,
  S3BackupStore,
  sealStream,
  type RetentionCandidate,
  type RetentionSettings,
} from '../src/backups/index.js';

const KEY = randomBytes(32);
// The AWS SDK warns once per process that its releases from 2027 on want Node 22; not news for these tests.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const BUCKET = 'osb-backups';
// The one access key s3rver knows (it refuses other key ids; it does not verify V4 signatures).
const S3_ACCESS_KEY_ID = 'S3RVER';
const S3_SECRET = 'S3RVER';
const MiB = 1024 * 1024;

const modeOf = (target: string) => statSync(target).mode & 0o777;

function tempDir(t: { teardown(fn: () => void): void }, name = 'osb-backup-store-test-'): string {
  const dir = mkdtempSync(path.join(tmpdir(), name));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream as AsyncIterable<Buffer>) parts.push(part);
  return Buffer.concat(parts);
}

/** `bytes` in pieces of up to 64 KiB, then an error: a backup script that died half-way. */
function failingBody(bytes: number): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= bytes) return void this.destroy(new Error('backup script exited with status 1'));
      const size = Math.min(65_536, bytes - sent);
      sent += size;
      this.push(randomBytes(size));
    },
  });
}

/** Every file under a folder, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath, entry.name));
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// ---------------------------------------------------------------------------------------------------------------
// Local folder

test('local store: put, get, list, delete; folders mode 700, files mode 600', async (t) => {
  const root = path.join(tempDir(t), 'backups');
  const store = new LocalBackupStore(root);
  t.is(store.describe(), `local folder ${root}`);
  t.deepEqual(await store.list(), []);
  const data = randomBytes(300_000);
  t.deepEqual(await store.put('inst-1/2024-05-01T10:00:00Z.osbbak', Readable.from([data.subarray(0, 1000), data.subarray(1000)])), { bytes: data.length });
  await store.put('inst-1/b2.osbbak', Readable.from([Buffer.from('two')]));
  await store.put('inst-10/c.osbbak', Readable.from([Buffer.from('three')]));
  t.true((await readAll(await store.get('inst-1/2024-05-01T10:00:00Z.osbbak'))).equals(data));
  t.is(modeOf(root), 0o700);
  t.is(modeOf(path.join(root, 'inst-1')), 0o700);
  t.is(modeOf(path.join(root, 'inst-1', 'b2.osbbak')), 0o600);

  const all = await store.list();
  t.deepEqual(
    all.map((object) => [object.key, object.bytes]),
    [
      ['inst-1/2024-05-01T10:00:00Z.osbbak', data.length],
      ['inst-1/b2.osbbak', 3],
      ['inst-10/c.osbbak', 5],
    ],
  );
  t.true(all.every((object) => object.modified instanceof Date && Date.now() - object.modified.getTime() < 60_000));
  t.deepEqual(
    (await store.list('inst-1/')).map((object) => object.key),
    ['inst-1/2024-05-01T10:00:00Z.osbbak', 'inst-1/b2.osbbak'],
  );
  t.deepEqual(
    (await store.list('inst-1')).map((object) => object.key),
    ['inst-1/2024-05-01T10:00:00Z.osbbak', 'inst-1/b2.osbbak', 'inst-10/c.osbbak'],
  );
  t.deepEqual(
    (await store.list('inst-1/b')).map((object) => object.key),
    ['inst-1/b2.osbbak'],
  );
  t.deepEqual(await store.list('nothing/'), []);

  // A put under an existing key replaces it whole.
  await store.put('inst-1/b2.osbbak', Readable.from([Buffer.from('replaced')]));
  t.is((await readAll(await store.get('inst-1/b2.osbbak'))).toString(), 'replaced');

  await store.delete('inst-1/b2.osbbak');
  await store.delete('inst-1/b2.osbbak'); // gone already: not an error
  const missing = await t.throwsAsync(store.get('inst-1/b2.osbbak'), { instanceOf: BackupStoreError });
  t.is(missing.problem, 'not-found');
  t.is(missing.message, `backup inst-1/b2.osbbak does not exist in local folder ${root}`);
  // The folder of a key whose last object went goes with it.
  await store.delete('inst-10/c.osbbak');
  t.deepEqual(readdirSync(root), ['inst-1']);
});

test('local store: a root folder with a looser mode is tightened to 700', async (t) => {
  const root = path.join(tempDir(t), 'backups');
  mkdirSync(root, { mode: 0o755 });
  chmodSync(root, 0o755);
  await new LocalBackupStore(root).put('a', Readable.from([Buffer.from('x')]));
  t.is(modeOf(root), 0o700);
});

test('local store: a failed put leaves no file and keeps what the key held before; the body error is passed on', async (t) => {
  const root = tempDir(t);
  const store = new LocalBackupStore(root);
  const failed = await t.throwsAsync(store.put('inst/new.osbbak', failingBody(3 * MiB)));
  t.is(failed.message, 'backup script exited with status 1');
  t.false(failed instanceof BackupStoreError);
  t.deepEqual(await store.list(), []);
  t.deepEqual(readdirSync(path.join(root, 'inst')), [], 'no temporary file is left');

  await store.put('inst/kept.osbbak', Readable.from([Buffer.from('old backup')]));
  await t.throwsAsync(store.put('inst/kept.osbbak', failingBody(100_000)));
  t.is((await readAll(await store.get('inst/kept.osbbak'))).toString(), 'old backup');
  t.deepEqual(readdirSync(path.join(root, 'inst')), ['kept.osbbak']);
});

test('local store: while a put runs only a hidden temporary file exists, and listings do not show it', async (t) => {
  const root = tempDir(t);
  const store = new LocalBackupStore(root);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const body = Readable.from(
    (async function* () {
      yield Buffer.from('first half ');
      await gate;
      yield Buffer.from('second half');
    })(),
  );
  const putting = store.put('inst/slow.osbbak', body);
  const inFolder = () => {
    try {
      return readdirSync(path.join(root, 'inst'));
    } catch {
      return [];
    }
  };
  for (let i = 0; i < 200 && inFolder().length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  const during = inFolder();
  t.is(during.length, 1);
  t.regex(during[0]!, /^\.slow\.osbbak\.[0-9a-f]+\.partial$/);
  t.is(modeOf(path.join(root, 'inst', during[0]!)), 0o600);
  t.deepEqual(await store.list(), []);
  await t.throwsAsync(store.get('inst/slow.osbbak'), { instanceOf: BackupStoreError });
  await t.throwsAsync(store.get('inst'), { instanceOf: BackupStoreError, message: /does not exist/ }, 'a folder is no backup');
  release();
  t.deepEqual(await putting, { bytes: 22 });
  t.deepEqual(readdirSync(path.join(root, 'inst')), ['slow.osbbak']);
});

test('local store: an aborted put leaves nothing', async (t) => {
  const root = tempDir(t);
  const store = new LocalBackupStore(root);
  const controller = new AbortController();
  const body = new Readable({
    read() {
      this.push(randomBytes(65_536));
    },
  });
  setTimeout(() => controller.abort(new Error('backup cancelled')), 50);
  await t.throwsAsync(store.put('inst/x', body, { signal: controller.signal }), { message: 'backup cancelled' });
  t.true(body.destroyed);
  t.deepEqual(filesUnder(root), []);
});

test('local store: keys with "..", absolute paths and other odd segments are refused', async (t) => {
  const root = tempDir(t);
  const store = new LocalBackupStore(path.join(root, 'backups'));
  writeFileSync(path.join(root, 'outside'), 'not a backup');
  for (const key of ['../outside', 'a/../../outside', '/etc/passwd', '..', '.', 'a//b', 'a/', '', '.hidden', 'a/./b', 'a\\b', 'a b', 'ä', 'x\0y']) {
    for (const attempt of [() => store.put(key, Readable.from([Buffer.from('x')])), () => store.get(key), () => store.delete(key)]) {
      const error = await t.throwsAsync(attempt(), { instanceOf: BackupStoreError }, `key ${JSON.stringify(key)}`);
      t.is(error.problem, 'invalid-key');
    }
  }
  for (const prefix of ['../', '/', '..', 'a/../']) {
    await t.throwsAsync(store.list(prefix), { instanceOf: BackupStoreError }, `prefix ${prefix}`);
  }
  t.is(readFileSync(path.join(root, 'outside'), 'utf8'), 'not a backup');
});

test('local store: a folder that cannot be written names the folder', async (t) => {
  const root = tempDir(t);
  writeFileSync(path.join(root, 'file'), 'x');
  const store = new LocalBackupStore(path.join(root, 'file', 'backups'));
  const error = await t.throwsAsync(store.put('a', Readable.from([Buffer.from('x')])), { instanceOf: BackupStoreError });
  t.is(error.problem, 'failed');
  t.true(error.message.startsWith(`writing backup a in local folder ${path.join(root, 'file', 'backups')} failed: `), error.message);
});

test('sealed into a local store and opened from it again', async (t) => {
  const store = new LocalBackupStore(tempDir(t));
  const data = Buffer.from('-- dump\n'.repeat(100_000));
  const sealing = sealStream(KEY, { context: 'inst/1' });
  const put = store.put('inst/1.osbbak', sealing.stream);
  await pipeline(Readable.from([data]), sealing.stream);
  t.is((await put).bytes, sealing.summary().storedBytes);
  const stored = await readAll(await store.get('inst/1.osbbak'));
  t.is(createHash('sha256').update(stored).digest('hex'), sealing.summary().sha256);
  const opening = openStream(KEY, { context: 'inst/1' });
  const back: Buffer[] = [];
  await pipeline(
    await store.get('inst/1.osbbak'),
    opening.stream,
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        back.push(chunk);
        callback();
      },
    }),
  );
  t.true(Buffer.concat(back).equals(data));
});

// ---------------------------------------------------------------------------------------------------------------
// S3 (s3rver on loopback)

let s3Dir: string;
let s3Server: S3rver;
let s3Endpoint: string;
const objectEvents: string[] = [];

test.before(async () => {
  s3Dir = mkdtempSync(path.join(tmpdir(), 'osb-s3rver-'));
  s3Server = new S3rver({ address: '127.0.0.1', port: 0, directory: s3Dir, silent: true, configureBuckets: [{ name: BUCKET, configs: [] }] });
  // s3rver is a Koa app that announces each stored object (ObjectCreated:Put for one request, :Post for a multipart upload).
  (s3Server as unknown as NodeJS.EventEmitter).on('event', (event: { Records: Array<{ eventName: string; s3: { object: { key: string } } }> }) => {
    for (const record of event.Records) objectEvents.push(`${record.eventName} ${record.s3.object.key}`);
  });
  const address = await s3Server.run();
  s3Endpoint = `http://127.0.0.1:${address.port}`;
});

test.after.always(async () => {
  await s3Server?.close();
  if (s3Dir) rmSync(s3Dir, { recursive: true, force: true });
});

function s3Store(t: { teardown(fn: () => void): void }, options: Partial<ConstructorParameters<typeof S3BackupStore>[0]> = {}): S3BackupStore {
  const store = new S3BackupStore({
    bucket: BUCKET,
    endpoint: s3Endpoint,
    accessKeyId: S3_ACCESS_KEY_ID,
    secretAccessKey: S3_SECRET,
    partSizeBytes: 5 * MiB,
    ...options,
  });
  t.teardown(() => store.destroy());
  return store;
}

test('S3 store: put, get, list, delete under a prefix', async (t) => {
  const store = s3Store(t, { prefix: 'broker-a' });
  const other = s3Store(t, { prefix: 'broker-b/' });
  t.is(store.describe(), `S3 bucket ${BUCKET} (prefix broker-a/) at ${s3Endpoint}`);
  const data = randomBytes(200_000);
  t.deepEqual(await store.put('inst-1/one.osbbak', Readable.from([data.subarray(0, 10), data.subarray(10)])), { bytes: data.length });
  await store.put('inst-1/two.osbbak', Readable.from([Buffer.from('two')]));
  await store.put('inst-2/three.osbbak', Readable.from([Buffer.from('three')]));
  await other.put('inst-1/not-mine.osbbak', Readable.from([Buffer.from('other broker')]));
  t.true((await readAll(await store.get('inst-1/one.osbbak'))).equals(data));
  t.deepEqual(
    (await store.list()).map((object) => [object.key, object.bytes]),
    [
      ['inst-1/one.osbbak', data.length],
      ['inst-1/two.osbbak', 3],
      ['inst-2/three.osbbak', 5],
    ],
  );
  const listed = await store.list('inst-1/');
  t.deepEqual(
    listed.map((object) => object.key),
    ['inst-1/one.osbbak', 'inst-1/two.osbbak'],
  );
  t.true(listed.every((object) => Math.abs(Date.now() - object.modified.getTime()) < 120_000));
  await store.delete('inst-1/two.osbbak');
  await store.delete('inst-1/two.osbbak');
  t.deepEqual(
    (await store.list('inst-1/')).map((object) => object.key),
    ['inst-1/one.osbbak'],
  );
  const missing = await t.throwsAsync(store.get('inst-1/two.osbbak'), { instanceOf: BackupStoreError });
  t.is(missing.problem, 'not-found');
  t.is(missing.message, `backup inst-1/two.osbbak does not exist in S3 bucket ${BUCKET} (prefix broker-a/) at ${s3Endpoint}`);
  t.deepEqual(
    (await other.list()).map((object) => object.key),
    ['inst-1/not-mine.osbbak'],
  );
  await t.throwsAsync(store.put('../escape', Readable.from([Buffer.from('x')])), { instanceOf: BackupStoreError, message: /not allowed/ });
});

test('S3 store: a sealed backup larger than a part goes up as a multipart upload; the bucket holds no plain text', async (t) => {
  const store = s3Store(t, { prefix: 'multipart' });
  const marker = 'PLAIN-TEXT-MARKER-77d1';
  // Incompressible data with the marker spread through it, so the stored object is about 12 MiB: three 5 MiB parts.
  const noise = randomBytes(12 * MiB);
  for (let at = 0; at < noise.length; at += 100_000) noise.write(marker, at, 'latin1');
  const sealing = sealStream(KEY, { context: 'inst/big' });
  const putting = store.put('inst/big.osbbak', sealing.stream, { sizeHint: noise.length });
  await pipeline(Readable.from([noise.subarray(0, 5 * MiB), noise.subarray(5 * MiB)]), sealing.stream);
  const { bytes } = await putting;
  const summary = sealing.summary();
  t.is(bytes, summary.storedBytes);
  t.true(bytes > 2 * 5 * MiB);
  t.true(objectEvents.includes('ObjectCreated:Post multipart/inst/big.osbbak'), objectEvents.join(', '));
  t.deepEqual(
    (await store.list('inst/')).map((object) => [object.key, object.bytes]),
    [['inst/big.osbbak', bytes]],
  );

  // Whatever s3rver wrote to its disk for this bucket: not one file holds the marker.
  const files = filesUnder(s3Dir);
  t.true(files.some((file) => statSync(file).size === bytes));
  for (const file of files) t.false(readFileSync(file).includes(marker), file);

  const stored = await readAll(await store.get('inst/big.osbbak'));
  t.is(createHash('sha256').update(stored).digest('hex'), summary.sha256);
  const opening = openStream(KEY, { context: 'inst/big' });
  const back: Buffer[] = [];
  await pipeline(
    await store.get('inst/big.osbbak'),
    opening.stream,
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        back.push(chunk);
        callback();
      },
    }),
  );
  t.true(Buffer.concat(back).equals(noise));
});

test('S3 store: a put whose body fails after several parts leaves no object, and the body error is passed on', async (t) => {
  const store = s3Store(t, { prefix: 'failing' });
  const error = await t.throwsAsync(store.put('inst/broken.osbbak', failingBody(13 * MiB)));
  t.is(error.message, 'backup script exited with status 1');
  t.false(error instanceof BackupStoreError);
  t.deepEqual(await store.list(), []);
  const small = await t.throwsAsync(store.put('inst/broken-small.osbbak', failingBody(1000)));
  t.is(small.message, 'backup script exited with status 1');
  t.deepEqual(await store.list(), []);
});

test('S3 store: a missing bucket says so', async (t) => {
  const store = s3Store(t, { bucket: 'no-such-bucket' });
  for (const attempt of [() => store.put('a', Readable.from([Buffer.from('x')])), () => store.list(), () => store.get('a')]) {
    const error = await t.throwsAsync(attempt(), { instanceOf: BackupStoreError });
    t.is(error.problem, 'no-bucket');
    t.is(error.message, `bucket no-such-bucket does not exist at ${s3Endpoint}`);
  }
});

test('S3 store: an endpoint that is down gives a clear error without any credential in it', async (t) => {
  const port = await closedPort();
  const secret = 'sEcReT-acce55-key-do-not-print';
  const accessKeyId = 'AKIAEXAMPLEKEYID1234';
  const store = s3Store(t, { endpoint: `http://127.0.0.1:${port}`, accessKeyId, secretAccessKey: secret, maxAttempts: 2 });
  t.is(store.describe(), `S3 bucket ${BUCKET} at http://127.0.0.1:${port}`);
  for (const [attempt, action] of [
    [() => store.put('inst/a', Readable.from([Buffer.from('x')])), 'writing backup inst/a'],
    [() => store.list(), 'listing backups'],
    [() => store.get('inst/a'), 'reading backup inst/a'],
    [() => store.delete('inst/a'), 'deleting backup inst/a'],
  ] as const) {
    const error = await t.throwsAsync<BackupStoreError>(attempt(), { instanceOf: BackupStoreError });
    t.is(error.problem, 'unreachable');
    t.is(error.message, `S3 endpoint http://127.0.0.1:${port} did not answer: ECONNREFUSED (${action})`);
    const everything = `${String(error)} ${error.stack} ${JSON.stringify(error)} ${JSON.stringify(Object.entries(error))}`;
    t.false(everything.includes(secret));
    t.false(everything.includes(accessKeyId));
  }
});

test('S3 store: refused credentials say so, without the secret', async (t) => {
  const secret = 'wrong-secret-value-0042';
  const store = s3Store(t, { accessKeyId: 'AKIAUNKNOWN0000', secretAccessKey: secret });
  for (const attempt of [() => store.list(), () => store.put('a', Readable.from([Buffer.from('x')]))]) {
    const error = await t.throwsAsync(attempt(), { instanceOf: BackupStoreError });
    t.is(error.problem, 'access-denied');
    t.regex(
      error.message,
      new RegExp(`^${s3Endpoint} refused access to bucket ${BUCKET} \\(InvalidAccessKeyId\\): check the access key id and secret access key`),
    );
    t.false(`${error.stack} ${JSON.stringify(error)}`.includes(secret));
  }
});

test.serial('S3 store: a 160 MB upload stays within bounded memory', async (t) => {
  const store = s3Store(t, { prefix: 'memory', partSizeBytes: 8 * MiB, queueSize: 2 });
  const total = 160 * MiB;
  const noise = randomBytes(MiB);
  let sent = 0;
  const body = new Readable({
    read() {
      if (sent >= total) return void this.push(null);
      sent += 65_536;
      this.push(noise.subarray(((sent / 65_536) % 16) * 65_536).subarray(0, 65_536));
    },
  });
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  const started = performance.now();
  try {
    t.deepEqual(await store.put('inst/large.bin', body, { sizeHint: total }), { bytes: total });
  } finally {
    clearInterval(sampler);
  }
  const growthMb = (peak - before) / MiB;
  t.log(`160 MB to s3rver in ${((performance.now() - started) / 1000).toFixed(1)} s; rss grew by ${growthMb.toFixed(0)} MB (s3rver runs in this process too)`);
  t.deepEqual(
    (await store.list()).map((object) => object.bytes),
    [total],
  );
  await store.delete('inst/large.bin');
  t.true(growthMb < 120, `rss grew by ${growthMb.toFixed(0)} MB`);
});

// ---------------------------------------------------------------------------------------------------------------
// putSealed / getOpened: a dump into a store and back, and which error wins

function collector(): { sink: Writable; data: () => Buffer } {
  const parts: Buffer[] = [];
  return {
    sink: new Writable({
      write(chunk: Buffer, _encoding, callback) {
        parts.push(chunk);
        callback();
      },
    }),
    data: () => Buffer.concat(parts),
  };
}

for (const kind of ['local', 's3'] as const) {
  test(`putSealed and getOpened (${kind}): round trip, figures, and the error that caused a failure`, async (t) => {
    const store = kind === 'local' ? new LocalBackupStore(tempDir(t)) : s3Store(t, { prefix: 'transfer' });
    const dump = Buffer.from('COPY t FROM stdin;\n'.repeat(200_000));
    const summary = await putSealed(store, 'inst/a.osbbak', Readable.from([dump]), KEY, { context: 'inst/a' });
    t.is(summary.plainBytes, dump.length);
    t.deepEqual(
      (await store.list('inst/')).map((object) => [object.key, object.bytes]),
      [['inst/a.osbbak', summary.storedBytes]],
    );
    const out = collector();
    t.deepEqual(await getOpened(store, 'inst/a.osbbak', out.sink, KEY, { context: 'inst/a' }), summary);
    t.true(out.data().equals(dump));

    // The dump failing half-way: its own error, and nothing stored.
    const failed = await t.throwsAsync(putSealed(store, 'inst/b.osbbak', failingBody(7 * MiB), KEY));
    t.is(failed.message, 'backup script exited with status 1');
    t.deepEqual(
      (await store.list('inst/')).map((object) => object.key),
      ['inst/a.osbbak'],
    );

    // Opened with another key or as another backup: the format's error, and the destination is ended.
    const wrong = collector();
    await t.throwsAsync(getOpened(store, 'inst/a.osbbak', wrong.sink, randomBytes(32), { context: 'inst/a' }), { message: /another encryption key/ });
    t.true(wrong.sink.destroyed);
    await t.throwsAsync(getOpened(store, 'inst/a.osbbak', collector().sink, KEY, { context: 'inst/b' }), { message: /belongs to another instance or backup/ });
    const missing = collector();
    await t.throwsAsync(getOpened(store, 'inst/none.osbbak', missing.sink, KEY), { instanceOf: BackupStoreError, message: /does not exist/ });
    t.true(missing.sink.destroyed);
  });
}

test('putSealed: a store that fails reports the store error, not the dump stream it cut off', async (t) => {
  const store = s3Store(t, { bucket: 'no-such-bucket' });
  const error = await t.throwsAsync(putSealed(store, 'inst/a.osbbak', Readable.from([randomBytes(12 * MiB)]), KEY), { instanceOf: BackupStoreError });
  t.is(error.message, `bucket no-such-bucket does not exist at ${s3Endpoint}`);
  const local = new LocalBackupStore(path.join(tempDir(t), 'file'));
  writeFileSync(local.dir, 'a file where the folder should be');
  await t.throwsAsync(putSealed(local, 'inst/a.osbbak', Readable.from([randomBytes(100)]), KEY), {
    instanceOf: BackupStoreError,
    message: /writing backup inst\/a.osbbak in local folder/,
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Configuration

test('backup configuration: defaults', (t) => {
  const config = loadBackupConfig({ BROKER_STATE_DIR: '/var/lib/broker' });
  t.deepEqual(config, {
    store: { kind: 'local', dir: '/var/lib/broker/backups' },
    retention: { keepLast: 7, keepDays: 7, keepDeletedDays: 30 },
    schedule: undefined,
    deletedPassSeconds: 3600,
  });
  t.deepEqual(loadBackupConfig({}).store, { kind: 'local', dir: path.resolve('.broker-state/backups') });
  t.deepEqual(loadBackupConfig({ BROKER_BACKUP_DIR: 'rel/dir' }).store, { kind: 'local', dir: path.resolve('rel/dir') });
  t.true(createBackupStore(loadBackupConfig({ BROKER_BACKUP_DIR: '/x' }).store) instanceof LocalBackupStore);
});

test('backup configuration: S3 with every setting, secrets from files', (t) => {
  const dir = tempDir(t);
  writeFileSync(path.join(dir, 'key-id'), 'AKIAFILE\n');
  writeFileSync(path.join(dir, 'secret'), 'secret-from-file\n');
  const config = loadBackupConfig({
    BROKER_BACKUP_STORE: 's3',
    BROKER_BACKUP_S3_BUCKET: 'osb-backups',
    BROKER_BACKUP_S3_PREFIX: 'prod/broker-1/',
    BROKER_BACKUP_S3_ENDPOINT: 'http://127.0.0.1:9000/',
    BROKER_BACKUP_S3_REGION: 'eu-central-1',
    BROKER_BACKUP_S3_ACCESS_KEY_ID_FILE: path.join(dir, 'key-id'),
    BROKER_BACKUP_S3_SECRET_ACCESS_KEY_FILE: path.join(dir, 'secret'),
    BROKER_BACKUP_S3_PART_SIZE_MB: '16',
    BROKER_BACKUP_KEEP_LAST: '3',
    BROKER_BACKUP_KEEP_DAYS: '0',
    BROKER_BACKUP_KEEP_DELETED_DAYS: '90',
    BROKER_BACKUP_SCHEDULE: '30 2 * * *',
    BROKER_BACKUP_DELETED_PASS_SECONDS: '600',
  });
  t.deepEqual(config, {
    store: {
      kind: 's3',
      bucket: 'osb-backups',
      prefix: 'prod/broker-1/',
      endpoint: 'http://127.0.0.1:9000',
      region: 'eu-central-1',
      accessKeyId: 'AKIAFILE',
      secretAccessKey: 'secret-from-file',
      forcePathStyle: true,
      partSizeBytes: 16 * MiB,
    },
    retention: { keepLast: 3, keepDays: 0, keepDeletedDays: 90 },
    schedule: '30 2 * * *',
    deletedPassSeconds: 600,
  });
  const store = createBackupStore(config.store);
  t.true(store instanceof S3BackupStore);
  t.is(store.describe(), 'S3 bucket osb-backups (prefix prod/broker-1/) at http://127.0.0.1:9000');
  (store as S3BackupStore).destroy();

  const aws = loadBackupConfig({
    BROKER_BACKUP_STORE: 's3',
    BROKER_BACKUP_S3_BUCKET: 'b-1',
    BROKER_BACKUP_S3_ACCESS_KEY_ID: 'AKIA',
    BROKER_BACKUP_S3_SECRET_ACCESS_KEY: 'env-secret',
  });
  t.like(aws.store, {
    kind: 's3',
    endpoint: undefined,
    region: 'us-east-1',
    forcePathStyle: false,
    secretAccessKey: 'env-secret',
    partSizeBytes: 8 * MiB,
    prefix: '',
  });
  t.like(
    loadBackupConfig({
      BROKER_BACKUP_STORE: 's3',
      BROKER_BACKUP_S3_BUCKET: 'b-1',
      BROKER_BACKUP_S3_ENDPOINT: 'https://s3.example',
      BROKER_BACKUP_S3_FORCE_PATH_STYLE: 'false',
    }).store,
    {
      forcePathStyle: false,
      accessKeyId: undefined,
    },
  );
});

test('backup configuration: bad values are refused, naming the variable and never a secret', (t) => {
  const s3 = { BROKER_BACKUP_STORE: 's3', BROKER_BACKUP_S3_BUCKET: 'osb-backups' };
  const refused = (env: NodeJS.ProcessEnv, pattern: RegExp) => t.throws(() => loadBackupConfig(env), { message: pattern });
  refused({ BROKER_BACKUP_STORE: 'ftp' }, /BROKER_BACKUP_STORE must be local or s3/);
  refused({ BROKER_BACKUP_STORE: 's3' }, /needs BROKER_BACKUP_S3_BUCKET/);
  refused({ ...s3, BROKER_BACKUP_S3_BUCKET: 'Bad_Bucket' }, /BROKER_BACKUP_S3_BUCKET must be an S3 bucket name/);
  refused({ ...s3, BROKER_BACKUP_S3_ACCESS_KEY_ID: 'AKIA' }, /set both BROKER_BACKUP_S3_ACCESS_KEY_ID and BROKER_BACKUP_S3_SECRET_ACCESS_KEY/);
  refused({ ...s3, BROKER_BACKUP_S3_SECRET_ACCESS_KEY_FILE: '/no/such/file' }, /BROKER_BACKUP_S3_SECRET_ACCESS_KEY_FILE: cannot read \/no\/such\/file/);
  refused({ ...s3, BROKER_BACKUP_S3_ENDPOINT: 'ftp://host' }, /must start with http/);
  refused({ ...s3, BROKER_BACKUP_S3_PREFIX: 'a/../b' }, /BROKER_BACKUP_S3_PREFIX/);
  refused({ ...s3, BROKER_BACKUP_S3_FORCE_PATH_STYLE: 'maybe' }, /BROKER_BACKUP_S3_FORCE_PATH_STYLE must be true or false/);
  refused({ ...s3, BROKER_BACKUP_S3_PART_SIZE_MB: '1' }, /BROKER_BACKUP_S3_PART_SIZE_MB must be an integer from 5 to 5120/);
  refused({ BROKER_BACKUP_KEEP_LAST: '-1' }, /BROKER_BACKUP_KEEP_LAST must be an integer/);
  refused({ BROKER_BACKUP_KEEP_DAYS: '1.5' }, /BROKER_BACKUP_KEEP_DAYS must be an integer/);
  const leaky = t.throws(() => loadBackupConfig({ ...s3, BROKER_BACKUP_S3_ENDPOINT: 'http://user:pa55word-secret@127.0.0.1:9000' }));
  t.regex(leaky.message, /must not hold credentials/);
  t.false(leaky.message.includes('pa55word-secret'));
  const bad = t.throws(() => loadBackupConfig({ ...s3, BROKER_BACKUP_S3_ENDPOINT: 'http://[pa55word-secret' }));
  t.false(bad.message.includes('pa55word-secret'));
});

// ---------------------------------------------------------------------------------------------------------------
// Retention

const NOW = new Date('2024-06-30T12:00:00Z');
const daysAgo = (days: number) => new Date(NOW.getTime() - days * 86_400_000);
const daily = (count: number, state: RetentionCandidate['state'] = 'succeeded'): RetentionCandidate[] =>
  Array.from({ length: count }, (_, n) => ({ id: `d${n}`, created: daysAgo(n + 0.5), state }));
const ids = (decisions: Array<{ id: string }>) => decisions.map((decision) => decision.id);
const rules = (keepLast: number, keepDays: number, keepDeletedDays = 30): RetentionSettings => ({ keepLast, keepDays, keepDeletedDays });

test('retention: the last N successful backups, or those younger than N days, are kept (oldest deleted first)', (t) => {
  const backups = daily(10); // d0 is half a day old, d9 nine and a half
  t.deepEqual(ids(backupsToDelete(backups, rules(3, 0), { now: NOW })), ['d9', 'd8', 'd7', 'd6', 'd5', 'd4', 'd3']);
  t.deepEqual(ids(backupsToDelete(backups, rules(0, 5), { now: NOW })), ['d9', 'd8', 'd7', 'd6', 'd5']);
  // Either rule keeps a backup.
  t.deepEqual(ids(backupsToDelete(backups, rules(3, 5), { now: NOW })), ['d9', 'd8', 'd7', 'd6', 'd5']);
  t.deepEqual(ids(backupsToDelete(backups, rules(8, 2), { now: NOW })), ['d9', 'd8']);
  // Both rules off: retention keeps every successful backup.
  t.deepEqual(backupsToDelete(backups, rules(0, 0), { now: NOW }), []);
  t.deepEqual(backupsToDelete(backups, rules(3, 5), { now: NOW })[0], { id: 'd9', reason: 'not among the last 3 successful backups and older than 5 days' });
});

test('retention: the newest successful backup is never deleted, however old', (t) => {
  const backups: RetentionCandidate[] = [
    { id: 'old-ok', created: daysAgo(400), state: 'succeeded' },
    { id: 'older-ok', created: daysAgo(500), state: 'succeeded' },
    { id: 'recent-failed', created: daysAgo(0.1), state: 'failed' },
    { id: 'old-failed', created: daysAgo(3).toISOString(), state: 'failed' },
    { id: 'running', created: daysAgo(900).getTime(), state: 'in progress' },
  ];
  t.deepEqual(backupsToDelete(backups, rules(0, 1), { now: NOW }), [
    { id: 'older-ok', reason: 'older than 1 day' },
    { id: 'old-failed', reason: 'failed, and more than a day old' },
  ]);
});

test('retention: failed backups go after a day and do not count towards the last N; in progress ones stay', (t) => {
  const backups: RetentionCandidate[] = [
    { id: 'ok-new', created: daysAgo(0.5), state: 'succeeded' },
    { id: 'failed-1', created: daysAgo(0.9), state: 'failed' },
    { id: 'failed-2', created: daysAgo(1.1), state: 'failed' },
    { id: 'ok-old', created: daysAgo(2), state: 'succeeded' },
    { id: 'stuck', created: daysAgo(10), state: 'in progress' },
    { id: 'bad-date', created: 'not a date', state: 'failed' },
  ];
  t.deepEqual(ids(backupsToDelete(backups, rules(2, 0), { now: NOW })), ['failed-2']);
  t.deepEqual(ids(backupsToDelete(backups, rules(1, 0), { now: NOW })), ['ok-old', 'failed-2']);
});

test('retention: backups of a deleted instance stay keepDeletedDays, then all go', (t) => {
  const backups = [...daily(4), { id: 'f', created: daysAgo(5), state: 'failed' as const }, { id: 'r', created: daysAgo(1), state: 'in progress' as const }];
  // Deleted 10 days ago, kept 30 days: the usual rules only.
  t.deepEqual(ids(backupsToDelete(backups, rules(2, 0, 30), { now: NOW, instanceDeletedAt: daysAgo(10) })), ['f', 'd3', 'd2']);
  // Deleted 31 days ago: everything but the one still in progress, the newest successful one too.
  const gone = backupsToDelete(backups, rules(2, 0, 30), { now: NOW, instanceDeletedAt: daysAgo(31) });
  t.deepEqual(ids(gone), ['f', 'd3', 'd2', 'd1', 'd0']);
  t.is(gone[0]!.reason, 'its instance was deleted more than 30 days ago');
  // keepDeletedDays 0: they go with the instance.
  t.deepEqual(backupsToDelete(daily(1), rules(7, 7, 0), { now: NOW, instanceDeletedAt: NOW }), [{ id: 'd0', reason: 'its instance was deleted' }]);
});
