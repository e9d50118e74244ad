import type { Middleware } from 'koa';
import type { Logger } from '../../log.js';

/** One JSON line per request: never headers or bodies, which may carry secrets. */
export function accessLog(log: Logger): Middleware {
  // Its fields are fixed and hold no secret, so its lines skip the redaction pass (the costliest part of a line).
  const lines = log.child({}, { redact: [] });
  return async (ctx, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      lines.info(
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
