import Router from '@koa/router';
import type { Middleware } from 'koa';
import compose from 'koa-compose';
import type { Readiness } from '../health.js';

/** Runs the dependency checks (DependencyChecks). */
export interface ReadinessSource {
  run(): Promise<Readiness>;
}

/** The Prometheus text and its content type (BrokerMetrics). */
export interface MetricsText {
  readonly contentType: string;
  text(): Promise<string>;
}

/** Serves `router` for exactly these paths and passes every other request on untouched. */
const only = (paths: string[], router: Router): Middleware => {
  const serve = compose([router.routes(), router.allowedMethods({ throw: false })] as unknown as Middleware[]);
  return (ctx, next) => (paths.includes(ctx.path) ? serve(ctx, next) : next());
};

/**
 * GET /healthz: the process answers (no dependency is asked). GET /readyz: Redis and the Docker engine answer,
 * 200 or 503 naming the one that does not and why. Both without credentials, for load balancers and probes.
 */
export function healthRoutes(checks?: ReadinessSource): Middleware {
  const router = new Router();
  router.get('/healthz', (ctx) => {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { status: 'ok' };
  });
  if (checks) {
    router.get('/readyz', async (ctx) => {
      const readiness = await checks.run();
      ctx.set('Cache-Control', 'no-store');
      if (readiness.ready) {
        ctx.body = { status: 'ready', checks: readiness.checks };
        return;
      }
      const failing = Object.entries(readiness.checks).filter(([, result]) => result !== 'ok');
      ctx.status = 503;
      ctx.set('Retry-After', '5');
      ctx.body = {
        status: 'not ready',
        checks: readiness.checks,
        description: failing.map(([name, result]) => `${name} does not answer: ${result}`).join('; '),
      };
    });
  }
  return only(checks ? ['/healthz', '/readyz'] : ['/healthz'], router);
}

/** GET /metrics in the Prometheus text format, behind `auth` when one is given. */
export function metricsRoute(metrics: MetricsText, auth?: Middleware): Middleware {
  const router = new Router();
  const serve: Middleware = async (ctx) => {
    const text = await metrics.text();
    ctx.set('Cache-Control', 'no-store');
    ctx.type = metrics.contentType;
    ctx.body = text;
  };
  if (auth) router.get('/metrics', auth, serve);
  else router.get('/metrics', serve);
  return only(['/metrics'], router);
}
