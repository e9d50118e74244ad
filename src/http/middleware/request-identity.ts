import type { Middleware } from 'koa';

const HEADER = 'X-Broker-API-Request-Identity';

/** Echoes the platform's request identity so both sides can correlate logs. */
export const requestIdentity: Middleware = async (ctx, next) => {
  const id = ctx.get(HEADER);
  if (id) {
    ctx.state.requestId = id.slice(0, 200);
    ctx.set(HEADER, ctx.state.requestId);
  }
  await next();
};
