import type { Middleware } from 'koa';
import { createHash, timingSafeEqual } from 'node:crypto';
import { unauthorized } from '../../osb/errors.js';

const digest = (value: string) => createHash('sha256').update(value).digest();

/** Basic auth, compared in constant time (digests make the lengths equal). */
export function basicAuth(username: string, password: string): Middleware {
  const expected = digest(`${username}:${password}`);
  return async (ctx, next) => {
    const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(ctx.get('Authorization'));
    const given = match ? Buffer.from(match[1]!, 'base64').toString('utf8') : '';
    if (!timingSafeEqual(digest(given), expected)) throw unauthorized();
    await next();
  };
}
