import test from 'ava';
import { Counter, Histogram, Registry } from 'prom-client';
import { BrokerMetrics } from '../../src/metrics.js';
import type { DependencyChecks } from '../../src/health.js';

// BrokerMetrics counts HTTP requests in plain numbers (src/metrics.ts, HttpRequestMetrics); a scrape must read what
// prom-client's own counter and histogram would have given for the same requests.

const requests: Array<[string, string, number, number]> = [
  ['GET', '/v2/catalog', 200, 0.0001],
  ['GET', '/v2/catalog', 304, 0.005],
  ['HEAD', '/v2/catalog', 200, 0.01],
  ['GET', '/v2/*', 401, 12],
  ['PUT', '/v2/service_instances/:instance_id', 202, 0.3],
  ['PROPFIND', 'unmatched', 404, 0.025],
  ['GET', '/v2/catalog', 200, 1],
  ['GET', '/metrics', 401, 2.5000001],
  ['DELETE', '/v2/service_instances/:instance_id', 200, 10],
  ['GET', 'odd "route" \\ with\nquotes', 200, 0.07],
];

const checks = { timeoutMs: 100, run: async () => ({ status: 'ok', checks: { redis: 'ok', docker: 'ok' } }) } as unknown as DependencyChecks;

test('osb_http_requests_total and osb_http_request_duration_seconds read as prom-client would have them', async (t) => {
  const reference = new Registry();
  const counter = new Counter({
    name: 'osb_http_requests_total',
    help: 'HTTP requests answered, by method, route template and status code.',
    labelNames: ['method', 'route', 'status'],
    registers: [reference],
  });
  const histogram = new Histogram({
    name: 'osb_http_request_duration_seconds',
    help: 'Time from a request arriving to its answer being ready, by method and route template.',
    labelNames: ['method', 'route'],
    registers: [reference],
  });
  const metrics = new BrokerMetrics({ checks, listInstances: async () => [], definitions: [] });
  const families = async () =>
    (await metrics.text())
      .split('\n\n')
      .filter((family) => family.includes('# TYPE osb_http_request'))
      .join('\n\n')
      .trim();
  t.is(await families(), (await reference.metrics()).trim());

  for (const [method, route, status, seconds] of requests) {
    const known = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].includes(method) ? method : 'other';
    counter.labels(known, route, String(status)).inc();
    histogram.labels(known, route).observe(seconds);
    metrics.requestFinished(method, route, status, seconds);
  }
  t.is(await families(), (await reference.metrics()).trim());
  t.regex(await families(), /^osb_http_requests_total\{method="other",route="unmatched",status="404"\} 1$/m);
  t.regex(await families(), /^osb_http_request_duration_seconds_bucket\{le="\+Inf",method="GET",route="\/v2\/\*"\} 1$/m);

  metrics.registry.resetMetrics();
  t.notRegex(await metrics.text(), /^osb_http_requests_total\{/m);
  metrics.requestFinished('GET', '/v2/catalog', 200, 0.001);
  t.regex(await metrics.text(), /^osb_http_requests_total\{method="GET",route="\/v2\/catalog",status="200"\} 1$/m);
});
