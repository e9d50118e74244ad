import type { Middleware } from 'koa';
import type { Logger } from '../../log.js';

/** One JSON line per request: never headers or bodies, which may carry secrets. */
export function accessLog(log: Logger): Middleware {
  return async (ctx, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      log.info(
        {
          method: ctx.method,
          path: ctx.path,
          status: ctx.status,
          ms: Math.round((performance.now() - started) * 10) / 10,
          requestId: ctx.state.requestId,
          originatingUser: ctx.state.originatingUser,
        },
        'request',
      );
    }
  };
}
