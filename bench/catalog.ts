/**
 * GET /v2/catalog under load: the broker next to a bare node:http server that sends the very same bytes, in the
 * same process and the same run, loopback only. The load comes from autocannon in a worker thread, so it never
 * shares an event loop with the servers.
 */
import autocannon from 'autocannon';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export const CATALOG_CONNECTIONS = 20;

export interface Load {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** Answers other than the expected status, connection errors and time-outs: 0 in a sound run. */
  failures: number;
}

export interface CatalogSamples {
  bytes: number;
  seconds: number;
  broker: Load;
  bare: Load;
}

async function load(url: string, headers: Record<string, string>, seconds: number): Promise<Load> {
  const result = await autocannon({ url, headers, connections: CATALOG_CONNECTIONS, duration: seconds, workers: 1 });
  return {
    requestsPerSecond: result.requests.total / (result.duration || seconds),
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    failures: result.non2xx + result.errors + result.timeouts,
  };
}

/** A node:http server that answers every request with `body`, as the broker answers the catalog. */
async function bareServer(body: Buffer): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((_request, response) => {
    response.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': body.length });
    response.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v2/catalog`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Loads the broker's catalog and the bare server for `seconds` each, after one untimed second of each (JIT,
 * connection set-up). `headers` are what a platform sends: credentials and X-Broker-API-Version.
 */
export async function benchCatalog(brokerUrl: string, headers: Record<string, string>, seconds: number): Promise<CatalogSamples> {
  const url = `${brokerUrl}/v2/catalog`;
  const response = await fetch(url, { headers });
  if (response.status !== 200) throw new Error(`GET /v2/catalog answered ${response.status}`);
  const body = Buffer.from(await response.arrayBuffer());
  const bare = await bareServer(body);
  try {
    await load(url, headers, 1);
    await load(bare.url, headers, 1);
    const broker = await load(url, headers, seconds);
    const reference = await load(bare.url, headers, seconds);
    return { bytes: body.length, seconds, broker, bare: reference };
  } finally {
    await bare.close();
  }
}
