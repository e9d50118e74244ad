import test from 'ava';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { brokerSecrets } from '../../src/generated-secrets.js';

const modeOf = (target: string) => statSync(target).mode & 0o777;

function tempDir(t: { teardown(fn: () => void): void }): string {
  const parent = mkdtempSync(path.join(tmpdir(), 'osb-secrets-test-'));
  t.teardown(() => rmSync(parent, { recursive: true, force: true }));
  return parent;
}

test('a new state folder is made with mode 700 and secrets.json with mode 600', (t) => {
  const dir = path.join(tempDir(t), 'state');
  const secrets = brokerSecrets(dir);
  t.true(secrets.passwordGenerated);
  t.is(modeOf(dir), 0o700);
  t.is(modeOf(path.join(dir, 'secrets.json')), 0o600);
});

test('an existing folder and secrets.json with looser modes are tightened, and their secrets kept', (t) => {
  const dir = path.join(tempDir(t), 'state');
  mkdirSync(dir);
  chmodSync(dir, 0o755);
  const file = path.join(dir, 'secrets.json');
  writeFileSync(file, JSON.stringify({ password: 'kept-password', encryptionKey: '11'.repeat(32) }));
  chmodSync(file, 0o644);
  const secrets = brokerSecrets(dir);
  t.is(secrets.password, 'kept-password');
  t.false(secrets.passwordGenerated);
  t.is(modeOf(dir), 0o700);
  t.is(modeOf(file), 0o600);
});

test('with every secret in the environment, an existing folder is still tightened and no file is made', (t) => {
  const dir = path.join(tempDir(t), 'state');
  mkdirSync(dir, { mode: 0o777 });
  chmodSync(dir, 0o777);
  brokerSecrets(dir, 'from-env', Buffer.alloc(32, 1));
  t.is(modeOf(dir), 0o700);
  t.false(existsSync(path.join(dir, 'secrets.json')));
  const absent = path.join(tempDir(t), 'absent');
  brokerSecrets(absent, 'from-env', Buffer.alloc(32, 1));
  t.false(existsSync(absent));
});
