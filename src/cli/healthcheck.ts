import { loadConfig } from '../config.js';

/**
 * The container image's HEALTHCHECK: GET /healthz on the address the broker listens on (its loopback when it
 * listens on all addresses). Exit 0 on a 200, 1 otherwise. Node alone, so the image needs no curl.
 */
async function main(): Promise<number> {
  const { listenHost, listenPort } = loadConfig();
  const host = listenHost === '0.0.0.0' ? '127.0.0.1' : listenHost === '::' ? '[::1]' : listenHost.includes(':') ? `[${listenHost}]` : listenHost;
  const response = await fetch(`http://${host}:${listenPort}/healthz`, { signal: AbortSignal.timeout(3000) });
  await response.body?.cancel();
  if (response.status === 200) return 0;
  console.error(`healthcheck: /healthz answered ${response.status}`);
  return 1;
}

main().then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`healthcheck: ${error.message}`);
    process.exit(1);
  },
);
