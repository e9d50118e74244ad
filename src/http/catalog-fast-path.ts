import type { IncomingMessage, ServerResponse } from 'node:http';
import { parseApiVersion } from '../osb/version.js';
import type { AccessLine } from './middleware/access-log.js';
import { exactBasicHeader } from './middleware/basic-auth.js';
import type { RequestObserver } from './middleware/http-metrics.js';
import { originatingUserOf } from './middleware/originating-identity.js';
import { REQUEST_IDENTITY_HEADER, requestIdOf } from './middleware/request-identity.js';
import { matchesEtag, type CatalogCache } from './osb-routes.js';

export interface CatalogFastPathOptions {
  username: string;
  password: string;
  catalog: CatalogCache;
  accessLine: AccessLine;
  metrics?: RequestObserver;
}

/** Answers a request, or returns false without having touched it, for Koa to answer. */
export type FastPath = (request: IncomingMessage, response: ServerResponse) => boolean;

const ROUTE = '/v2/catalog';
/** Distinct X-Broker-API-Version spellings remembered; more are answered all the same, only not remembered. */
const MAX_VERSION_SPELLINGS = 32;
/** What Node's setHeader accepts in a value; a request identity with anything else is left to Koa. */
const INVALID_HEADER_CHAR = /[^\t\x20-\x7e\x80-\xff]/;

/** One version's answers, headers prepared once: [name, value, ...] as writeHead takes them. */
interface Prepared {
  body: Buffer;
  etag: string;
  ok: string[];
  notModified: string[];
}

/**
 * GET and HEAD /v2/catalog, answered in front of Koa, since platforms poll it: the Koa chain costs more than the
 * answer itself. It does what the chain does for a request it answers: the request identity echoed, credentials
 * compared in constant time, the version checked, the cached body per version with its ETag (304 on If-None-Match),
 * one access-log line and the request metrics, under the same route template. It takes only the happy path: a
 * request with other credentials (or another spelling of them), a missing or unsupported version, another method or
 * path goes to Koa untouched, so every error answer keeps one source. test/unit/catalog-fast-path.test.ts holds the
 * two to the same answers.
 */
export function catalogFastPath(options: CatalogFastPathOptions): FastPath {
  const { catalog, accessLine, metrics } = options;
  const authorized = exactBasicHeader(options.username, options.password);
  const versions = new Map<string, Prepared>();
  const prepared = (header: string): Prepared | undefined => {
    const known = versions.get(header);
    if (known) return known;
    const version = parseApiVersion(header);
    if (!version) return undefined;
    const { body, etag } = catalog(version);
    const entry: Prepared = {
      body,
      etag,
      // The order Koa sets them in; Node adds Date, Connection and Keep-Alive as it does for Koa.
      ok: ['Content-Type', 'application/json; charset=utf-8', 'ETag', etag, 'Content-Length', String(body.length)],
      notModified: ['ETag', etag],
    };
    if (versions.size < MAX_VERSION_SPELLINGS) versions.set(header, entry);
    return entry;
  };

  /** What to answer, or undefined to leave the request to Koa. Reads the request only, so it may throw: Koa then answers. */
  const answer = (request: IncomingMessage) => {
    const { method, url, headers } = request;
    if ((method !== 'GET' && method !== 'HEAD') || (url !== ROUTE && !url?.startsWith(`${ROUTE}?`))) return undefined;
    const authorization = headers.authorization;
    if (authorization === undefined || !authorized(authorization)) return undefined;
    // Node joins a repeated header of these names into one string; anything else is left to Koa.
    const { 'x-broker-api-version': version, 'x-broker-api-request-identity': id, 'x-broker-api-originating-identity': identity } = headers;
    if (typeof version !== 'string' || Array.isArray(id) || Array.isArray(identity)) return undefined;
    const entry = prepared(version);
    if (!entry) return undefined;
    const requestId = requestIdOf(id);
    if (requestId !== undefined && INVALID_HEADER_CHAR.test(requestId)) return undefined;
    const notModified = matchesEtag(headers['if-none-match'] ?? '', entry.etag);
    return {
      method,
      status: notModified ? 304 : 200,
      headers: notModified ? entry.notModified : entry.ok,
      body: notModified || method === 'HEAD' ? undefined : entry.body,
      requestId,
      originatingUser: identity ? originatingUserOf(identity) : undefined,
    };
  };

  return (request, response) => {
    const started = performance.now();
    let reply: ReturnType<typeof answer>;
    try {
      reply = answer(request);
    } catch {
      // The catalog failed to serialise, say: Koa answers that (a 500, logged) as it would without the fast path.
      return false;
    }
    if (!reply) return false;
    const { method, status, requestId } = reply;
    // Measured to the answer being ready, as the Koa chain measures it.
    const elapsedMs = performance.now() - started;
    response.writeHead(status, requestId === undefined ? reply.headers : [REQUEST_IDENTITY_HEADER, requestId, ...reply.headers]);
    response.end(reply.body);
    metrics?.requestFinished(method, ROUTE, status, elapsedMs / 1000);
    accessLine(method, ROUTE, status, elapsedMs, requestId, reply.originatingUser);
    return true;
  };
}
