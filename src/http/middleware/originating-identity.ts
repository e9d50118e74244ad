import type { Middleware } from 'koa';

/**
 * Reads X-Broker-API-Originating-Identity ("<platform> <base64 JSON>") for the logs.
 * Optional and parsed leniently: a missing or odd header never rejects a request.
 */
export const originatingIdentity: Middleware = async (ctx, next) => {
  const header = ctx.get('X-Broker-API-Originating-Identity');
  const [platform, encoded] = header.trim().split(/\s+/, 2);
  if (platform && encoded) {
    try {
      const value = JSON.parse(Buffer.from(encoded, 'base64').toString('utf8')) as Record<string, unknown>;
      const user = value.user_id ?? value.username ?? value.uid;
      if (typeof user === 'string' || typeof user === 'number') ctx.state.originatingUser = `${platform}:${String(user).slice(0, 100)}`;
    } catch {
      ctx.state.originatingUser = `${platform}:unparsed`;
    }
  }
  await next();
};
