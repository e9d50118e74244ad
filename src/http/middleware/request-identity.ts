import type { Middleware } from 'koa';

export const REQUEST_IDENTITY_HEADER = 'X-Broker-API-Request-Identity';

/** The platform's request identity as the broker keeps and echoes it: at most 200 characters; undefined without one. */
export const requestIdOf = (header: string | undefined): string | undefined => (header ? header.slice(0, 200) : undefined);

/** Echoes the platform's request identity so both sides can correlate logs. */
export const requestIdentity: Middleware = async (ctx, next) => {
  const id = requestIdOf(ctx.get(REQUEST_IDENTITY_HEADER));
  if (id !== undefined) {
    ctx.state.requestId = id;
    ctx.set(REQUEST_IDENTITY_HEADER, id);
  }
  await next();
};
