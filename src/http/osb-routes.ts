import Router from '@koa/router';
import type { Context, Middleware } from 'koa';
import { createHash } from 'node:crypto';
import { asyncRequired, badRequest, concurrencyError } from '../osb/errors.js';
import type { BindRequest, RequestMeta, ResourceQuery, ServiceBroker } from '../osb/types.js';
import { atLeast, type ApiVersion } from '../osb/version.js';
import { catalogFor } from './presenters.js';
import './request-state.js';

const asyncAllowed = (ctx: Context) => ctx.query.accepts_incomplete === 'true';
const version = (ctx: Context) => ctx.state.apiVersion!;
const meta = (ctx: Context): RequestMeta => ({ requestId: ctx.state.requestId, originatingUser: ctx.state.originatingUser });
const body = <T>(ctx: Context) => ctx.state.body as T;

function query(ctx: Context): ResourceQuery {
  const single = (name: string) => {
    const value = ctx.query[name];
    return Array.isArray(value) ? value[0] : value;
  };
  return { service_id: single('service_id'), plan_id: single('plan_id'), operation: single('operation') };
}

function reply(ctx: Context, status: number, payload: Record<string, unknown>, retryAfterSeconds?: number) {
  ctx.status = status;
  ctx.body = Object.fromEntries(Object.entries(payload).filter(([, value]) => value !== undefined && value !== ''));
  if (retryAfterSeconds !== undefined) ctx.set('Retry-After', String(retryAfterSeconds));
}

/**
 * If-None-Match as RFC 9110 has it: a list of tags (weak ones compared weakly) or "*". Unlike Koa's ctx.fresh it
 * ignores a request's Cache-Control: no-cache, which fetch adds to every conditional request and which is for caches.
 */
export function matchesEtag(header: string, etag: string): boolean {
  return header !== '' && header.split(',').some((tag) => ['*', etag].includes(tag.trim().replace(/^W\//, '')));
}

/** The newest minor version whose fields the catalog knows; later 2.x clients get the same catalog. */
const NEWEST_CATALOG_MINOR = 17;

/** The catalog as one API version's clients get it: its bytes and their ETag. */
export interface CatalogVariant {
  body: Buffer;
  etag: string;
}

/** The catalog for a client's version, serialised once per minor version (the catalog is fixed for the process). */
export type CatalogCache = (apiVersion: ApiVersion) => CatalogVariant;

export function catalogCache(broker: ServiceBroker): CatalogCache {
  const catalogs = new Map<number, CatalogVariant>();
  return (apiVersion) => {
    const minor = Math.min(apiVersion.minor, NEWEST_CATALOG_MINOR);
    let cached = catalogs.get(minor);
    if (!cached) {
      const body = Buffer.from(JSON.stringify(catalogFor(broker.catalog(), { major: 2, minor })));
      cached = { body, etag: `"${createHash('sha256').update(body).digest('base64url')}"` };
      catalogs.set(minor, cached);
    }
    return cached;
  };
}

/**
 * GET /v2/catalog, with an ETag for 304s. The app puts it right after the credential and version checks, ahead of
 * the router, since platforms poll it; the router's own catalog route answers the same, and so does the app's fast
 * path (catalog-fast-path.ts), which shares the cache.
 */
export function catalogEndpoint(broker: ServiceBroker, catalog: CatalogCache = catalogCache(broker)): Middleware {
  return async (ctx, next) => {
    if (ctx.path !== '/v2/catalog' || (ctx.method !== 'GET' && ctx.method !== 'HEAD')) {
      await next();
      return;
    }
    // The route template, as the router leaves it for the request metrics.
    (ctx as { _matchedRoute?: string })._matchedRoute = '/v2/catalog';
    const { body, etag } = catalog(version(ctx));
    ctx.status = 200;
    ctx.type = 'application/json; charset=utf-8';
    ctx.set('ETag', etag);
    if (matchesEtag(ctx.get('If-None-Match'), etag)) {
      ctx.status = 304;
      return;
    }
    ctx.body = body;
  };
}

/**
 * The OSB endpoints. This is the only place that turns lifecycle results into status codes.
 */
export function osbRoutes(broker: ServiceBroker, catalog: Middleware = catalogEndpoint(broker)): Router {
  const router = new Router({ prefix: '/v2' });

  router.get('/catalog', async (ctx, next) => {
    await catalog(ctx, next);
  });

  router.put('/service_instances/:instance_id', async (ctx) => {
    const result = await broker.provision(ctx.params.instance_id!, body(ctx), asyncAllowed(ctx), meta(ctx));
    // A 202 only ever goes to a client that allowed one (here and below).
    if (result.async && !asyncAllowed(ctx)) throw asyncRequired();
    const status = result.async ? 202 : result.alreadyExists ? 200 : 201;
    reply(ctx, status, { dashboard_url: result.dashboardUrl, operation: result.async ? result.operation : undefined });
  });

  router.get('/service_instances/:instance_id', async (ctx) => {
    const view = await broker.fetchInstance(ctx.params.instance_id!, query(ctx));
    reply(ctx, 200, {
      ...view,
      maintenance_info: atLeast(version(ctx), 15) ? view.maintenance_info : undefined,
      metadata: atLeast(version(ctx), 16) ? view.metadata : undefined,
    });
  });

  router.patch('/service_instances/:instance_id', async (ctx) => {
    const result = await broker.update(ctx.params.instance_id!, body(ctx), asyncAllowed(ctx), meta(ctx));
    if (result.async && !asyncAllowed(ctx)) throw asyncRequired();
    reply(
      ctx,
      result.async ? 202 : 200,
      result.async ? { operation: result.operation, dashboard_url: result.dashboardUrl } : { dashboard_url: result.dashboardUrl },
    );
  });

  router.delete('/service_instances/:instance_id', async (ctx) => {
    const result = await broker.deprovision(ctx.params.instance_id!, query(ctx), asyncAllowed(ctx), meta(ctx));
    if (result.async && !asyncAllowed(ctx)) throw asyncRequired();
    reply(ctx, result.async ? 202 : 200, result.async ? { operation: result.operation } : {});
  });

  router.get('/service_instances/:instance_id/last_operation', async (ctx) => {
    const operation = await broker.lastInstanceOperation(ctx.params.instance_id!, query(ctx));
    const knowsUsable = atLeast(version(ctx), 16);
    reply(
      ctx,
      200,
      {
        ...operation,
        instance_usable: knowsUsable ? operation.instance_usable : undefined,
        update_repeatable: knowsUsable ? operation.update_repeatable : undefined,
      },
      operation.state === 'in progress' ? 1 : undefined,
    );
  });

  router.put('/service_instances/:instance_id/service_bindings/:binding_id', async (ctx) => {
    // Asynchronous bindings arrived with 2.14; older platforms always get a synchronous answer.
    const allowAsync = asyncAllowed(ctx) && atLeast(version(ctx), 14);
    // Rotation arrived with 2.17: an older client's predecessor_binding_id is refused rather than ignored, which would
    // make an unrelated binding (or fail for want of the ids a rotation request may leave out).
    const request = body<BindRequest>(ctx);
    if (request?.predecessor_binding_id !== undefined && request.predecessor_binding_id !== null && !atLeast(version(ctx), 17)) {
      throw badRequest('predecessor_binding_id (binding rotation) needs X-Broker-API-Version 2.17 or later.');
    }
    const result = await broker.bind(ctx.params.instance_id!, ctx.params.binding_id!, request, allowAsync, meta(ctx));
    if (result.async && !allowAsync) throw concurrencyError('This service binding is being created.');
    if (result.async) return reply(ctx, 202, { operation: result.operation });
    reply(ctx, result.alreadyExists ? 200 : 201, {
      credentials: result.credentials,
      endpoints: atLeast(version(ctx), 15) ? result.endpoints : undefined,
      syslog_drain_url: result.syslogDrainUrl,
    });
  });

  router.get('/service_instances/:instance_id/service_bindings/:binding_id', async (ctx) => {
    const view = await broker.fetchBinding(ctx.params.instance_id!, ctx.params.binding_id!, query(ctx));
    reply(ctx, 200, { ...view, endpoints: atLeast(version(ctx), 15) ? view.endpoints : undefined });
  });

  router.delete('/service_instances/:instance_id/service_bindings/:binding_id', async (ctx) => {
    const allowAsync = asyncAllowed(ctx) && atLeast(version(ctx), 14);
    const result = await broker.unbind(ctx.params.instance_id!, ctx.params.binding_id!, query(ctx), allowAsync, meta(ctx));
    if (result.async && !allowAsync) throw concurrencyError('This service binding is being deleted.');
    reply(ctx, result.async ? 202 : 200, result.async ? { operation: result.operation } : {});
  });

  router.get('/service_instances/:instance_id/service_bindings/:binding_id/last_operation', async (ctx) => {
    const operation = await broker.lastBindingOperation(ctx.params.instance_id!, ctx.params.binding_id!, query(ctx));
    reply(ctx, 200, { state: operation.state, description: operation.description }, operation.state === 'in progress' ? 1 : undefined);
  });

  return router;
}
