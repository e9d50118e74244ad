import type { Middleware } from 'koa';
import type { Logger } from '../../log.js';

/** What an access-log line says about one request: never headers or bodies, which may carry secrets. */
export type AccessLine = (
  method: string,
  path: string,
  status: number,
  elapsedMs: number,
  requestId: string | undefined,
  originatingUser: string | undefined,
) => void;

/** Writes one access-log line (ms rounded to a tenth). The Koa chain and the catalog fast path share it. */
export function accessLine(log: Logger): AccessLine {
  // Its fields are fixed and hold no secret, so its lines skip the redaction pass (the costliest part of a line).
  const lines = log.child({}, { redact: [] });
  return (method, path, status, elapsedMs, requestId, originatingUser) => {
    lines.info({ method, path, status, ms: Math.round(elapsedMs * 10) / 10, requestId, originatingUser }, 'request');
  };
}

/** One JSON line per request, written by `line`. */
export function accessLog(line: AccessLine): Middleware {
  return async (ctx, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      line(ctx.method, ctx.path, ctx.status, performance.now() - started, ctx.state.requestId, ctx.state.originatingUser);
    }
  };
}
