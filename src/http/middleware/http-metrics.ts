import type { Context, Middleware } from 'koa';

/** Told about every answered request (the metrics implement it). */
export interface RequestObserver {
  requestFinished(method: string, route: string, status: number, seconds: number): void;
}

/** Paths served outside any router, each its own template. */
const FIXED = new Set(['/healthz', '/readyz', '/metrics']);
/** Mounts whose requests may end before their router matched (401, 412, 413): counted under the mount. */
const MOUNTS = ['/v2', '/broker', '/dashboard'];

/**
 * The route template a request matched, never its raw path: ids in paths must not become label values.
 * The router leaves the template on the context; requests no route took are counted by mount, or as "unmatched".
 */
export function routeOf(ctx: Context): string {
  const matched = (ctx as { _matchedRoute?: string | RegExp })._matchedRoute;
  if (typeof matched === 'string' && matched !== '') return matched;
  if (FIXED.has(ctx.path)) return ctx.path;
  const mount = MOUNTS.find((prefix) => ctx.path === prefix || ctx.path.startsWith(`${prefix}/`));
  return mount ? `${mount}/*` : 'unmatched';
}

/** Counts each request and its duration by method, route template and final status. */
export function httpMetrics(observer: RequestObserver): Middleware {
  return async (ctx, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      observer.requestFinished(ctx.method, routeOf(ctx), ctx.status, (performance.now() - started) / 1000);
    }
  };
}
