import type { Middleware } from 'koa';
import { badRequest, BrokerError, payloadTooLarge } from '../../osb/errors.js';

/** What a request body may hold, beyond its size in bytes: enough for any platform, too little to hurt. */
export const JSON_LIMITS = {
  /** Objects and arrays inside one another, the body itself being the first. */
  depth: 32,
  /** Keys of one object, items of one array. */
  entries: 1000,
  /** Characters of one string, keys included. */
  stringLength: 65_536,
} as const;

/** Throws a 400 naming the limit the parsed body goes past; walks at most `depth` levels down. */
function checkShape(value: unknown, depth: number): void {
  if (typeof value === 'string') {
    if (value.length > JSON_LIMITS.stringLength) {
      throw badRequest(`The request body has a string longer than ${JSON_LIMITS.stringLength} characters.`);
    }
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  if (depth > JSON_LIMITS.depth) throw badRequest(`The request body is nested more than ${JSON_LIMITS.depth} levels deep.`);
  if (Array.isArray(value)) {
    if (value.length > JSON_LIMITS.entries) throw badRequest(`The request body has an array of more than ${JSON_LIMITS.entries} items.`);
    for (const item of value) checkShape(item, depth + 1);
    return;
  }
  const entries = Object.entries(value);
  if (entries.length > JSON_LIMITS.entries) throw badRequest(`The request body has an object with more than ${JSON_LIMITS.entries} keys.`);
  for (const [key, item] of entries) {
    checkShape(key, depth);
    checkShape(item, depth + 1);
  }
}

/** Reads a JSON object body for PUT/PATCH, within a size limit and the shape limits above. */
export function jsonBody(limitBytes: number): Middleware {
  return async (ctx, next) => {
    if (ctx.method !== 'PUT' && ctx.method !== 'PATCH') {
      await next();
      return;
    }
    const declared = Number(ctx.get('Content-Length') || 0);
    if (declared > limitBytes) throw payloadTooLarge(limitBytes);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > limitBytes) throw payloadTooLarge(limitBytes);
      chunks.push(chunk);
    }
    const text = Buffer.concat(chunks).toString('utf8').trim();
    let body: unknown = {};
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (error) {
        throw new BrokerError(400, 'MalformedJSON', `The request body is not valid JSON: ${(error as Error).message}`);
      }
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('The request body must be a JSON object.');
    checkShape(body, 1);
    ctx.state.body = body;
    await next();
  };
}
