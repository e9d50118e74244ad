import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { engineOptions } from '../../src/docker/swarm.js';

test("a node's engine label becomes plain TCP, TLS with the client certificate folder, or a socket", (t) => {
  t.like(engineOptions({ url: 'tcp://10.0.0.12:2375' }), { protocol: 'http', host: '10.0.0.12', port: 2375 });
  t.like(engineOptions({ url: 'tcp://node-2' }), { protocol: 'http', host: 'node-2', port: 2375 });
  t.like(engineOptions({ url: 'unix:///var/run/docker.sock' }), { socketPath: '/var/run/docker.sock' });

  const dir = mkdtempSync(path.join(tmpdir(), 'osb-node-tls-'));
  try {
    for (const name of ['ca.pem', 'cert.pem', 'key.pem']) writeFileSync(path.join(dir, name), `${name} content`);
    const options = engineOptions({ url: 'https://10.0.0.12:2376', tlsDir: dir }) as Record<string, unknown>;
    t.like(options, { protocol: 'https', host: '10.0.0.12', port: 2376 });
    t.is(String(options.ca), 'ca.pem content');
    t.is(String(options.cert), 'cert.pem content');
    t.is(String(options.key), 'key.pem content');
    // A tcp:// label with a certificate folder still speaks TLS, on the TLS port by default.
    t.like(engineOptions({ url: 'tcp://10.0.0.13', tlsDir: dir }), { protocol: 'https', port: 2376 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
