import type { Middleware } from 'koa';
import { badRequest, BrokerError, payloadTooLarge } from '../../osb/errors.js';

/** Reads a JSON object body for PUT/PATCH, within a size limit. */
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
    ctx.state.body = body;
    await next();
  };
}
