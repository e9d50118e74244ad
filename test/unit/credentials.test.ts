import test from 'ava';
import { renderCredentials } from '../../src/broker/credentials.js';
import { redact } from '../../src/broker/scripts.js';
import { Sealer } from '../../src/store/sealer.js';
import { randomBytes } from 'node:crypto';

test('templates percent-encode inside URIs and keep numbers numeric', (t) => {
  const credentials = renderCredentials(
    {
      uri: 'postgres://{binding.username|uri}:{binding.password|uri}@{host}:{port}/{params.database|uri}',
      port: '{port}',
      password: '{binding.password}',
      missing: '{binding.vhost}',
      partlyMissing: 'x://{binding.vhost|uri}',
    },
    { host: 'db.local', port: 40001, params: { database: 'app' }, binding: { username: 'u@1', password: 'p:/ ?#&%' } },
  );
  t.is(credentials.uri, 'postgres://u%401:p%3A%2F%20%3F%23%26%25@db.local:40001/app');
  t.is(credentials.port, 40001);
  t.is(credentials.password, 'p:/ ?#&%');
  t.false('missing' in credentials, 'fields without a value are left out, not sent empty');
  t.false('partlyMissing' in credentials);
});

test('sealed secrets round-trip, are bound to their record and need the right key', (t) => {
  const sealer = new Sealer(randomBytes(32));
  const sealed = sealer.seal({ password: 'hunter2' }, 'instance:a');
  t.false(sealed.includes('hunter2'));
  t.deepEqual(sealer.open(sealed, 'instance:a'), { password: 'hunter2' });
  t.throws(() => sealer.open(sealed, 'instance:b'), { message: /cannot decrypt/ });
  t.throws(() => new Sealer(randomBytes(32)).open(sealed, 'instance:a'), { message: /BROKER_ENCRYPTION_KEY/ });
  t.not(sealer.seal('x', 'k'), sealer.seal('x', 'k'), 'a fresh IV every time');
});

test('script errors have every known secret removed', (t) => {
  t.is(redact('FATAL: password "s3cr3t" for user "u" s3cr3t', ['s3cr3t']), 'FATAL: password "[redacted]" for user "u" [redacted]');
});
