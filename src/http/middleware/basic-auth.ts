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

/**
 * Whether an Authorization header is, character for character, the one clients build from the broker's credentials
 * ("Basic " + base64 of "user:password"). Every header it accepts basicAuth accepts too; false only means "not this
 * exact spelling", and callers then leave the request to basicAuth. It is several times cheaper than basicAuth's
 * digests and as blind to the secret: it reads as many characters as the expected header has, whatever the given one
 * holds and however long it is, and never branches on what it finds.
 */
export function exactBasicHeader(username: string, password: string): (header: string) => boolean {
  const expected = `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
  return (header) => {
    let difference = header.length ^ expected.length;
    // A shorter header is read round and round rather than past its end (and an empty one, which gives NaN, as 0).
    const length = header.length || 1;
    for (let index = 0; index < expected.length; index++) difference |= header.charCodeAt(index % length) ^ expected.charCodeAt(index);
    return difference === 0;
  };
}
