import type { Middleware } from 'koa';

/**
 * "<platform>:<user>" from X-Broker-API-Originating-Identity ("<platform> <base64 JSON>"), for the logs; undefined
 * when the header is missing or has no user. Parsed leniently: an odd header never rejects a request.
 */
export function originatingUserOf(header: string): string | undefined {
  const [platform, encoded] = header.trim().split(/\s+/, 2);
  if (!platform || !encoded) return undefined;
  try {
    const value = JSON.parse(Buffer.from(encoded, 'base64').toString('utf8')) as Record<string, unknown>;
    const user = value.user_id ?? value.username ?? value.uid;
    return typeof user === 'string' || typeof user === 'number' ? `${platform}:${String(user).slice(0, 100)}` : undefined;
  } catch {
    return `${platform}:unparsed`;
  }
}

/** Reads X-Broker-API-Originating-Identity for the logs. Optional: a missing or odd header never rejects a request. */
export const originatingIdentity: Middleware = async (ctx, next) => {
  const user = originatingUserOf(ctx.get('X-Broker-API-Originating-Identity'));
  if (user !== undefined) ctx.state.originatingUser = user;
  await next();
};
