import type { Middleware } from 'koa';
import { BrokerError } from '../../osb/errors.js';
import type { Logger } from '../../log.js';
import { StoreUnavailableError } from '../../store/errors.js';
import { problemPage } from '../../dashboard/pages.js';

/** What a 503 asks clients to wait before they try again: about as long as a restarted Redis takes to answer. */
const STORE_RETRY_AFTER_SECONDS = 5;
/** While the state store is away, one warning per this many milliseconds, not one per request. */
const STORE_WARNING_INTERVAL_MS = 60_000;

/** Turns thrown BrokerErrors into their status and JSON body; anything else is a 500 without internals. */
export function errors(log: Logger): Middleware {
  let lastStoreWarning = 0;
  let refusedSinceWarning = 0;
  return async (ctx, next) => {
    try {
      await next();
      // Koa and the router answer unknown routes and methods with text; the OSB wants JSON everywhere. A method
      // the router does not know (its 501) is a 405 like a known one on the wrong path: both name what is allowed.
      const allow = ctx.response.get('Allow');
      if ((ctx.status === 405 || ctx.status === 501) && allow) {
        ctx.status = 405;
        ctx.body = { error: 'MethodNotAllowed', description: `${ctx.method} is not allowed on ${ctx.path}; allowed: ${allow}.` };
      } else if ((ctx.status === 404 || ctx.status === 405 || ctx.status === 501) && (ctx.body === undefined || ctx.body === null)) {
        ctx.remove('Allow');
        ctx.status = 404;
        ctx.body = { error: 'NotFound', description: `No route for ${ctx.method} ${ctx.path}.` };
      }
    } catch (error) {
      if (error instanceof BrokerError) {
        ctx.status = error.status;
        ctx.body = error.body();
        if (error.status === 401) ctx.set('WWW-Authenticate', 'Basic realm="osb-docker-broker"');
      } else if (error instanceof StoreUnavailableError) {
        // The broker is fine but cannot read or write its state just now: the client may simply try again shortly.
        refusedSinceWarning++;
        if (Date.now() - lastStoreWarning >= STORE_WARNING_INTERVAL_MS) {
          log.warn({ reason: error.message, refused: refusedSinceWarning }, 'answering 503: the state store (Redis) does not answer');
          lastStoreWarning = Date.now();
          refusedSinceWarning = 0;
        }
        const description = 'The broker cannot reach its state store right now. Try again in a few seconds.';
        ctx.status = 503;
        ctx.set('Retry-After', String(STORE_RETRY_AFTER_SECONDS));
        if (/^\/dashboard(\/|$)/.test(ctx.path) && !ctx.path.includes('/api/')) {
          ctx.type = 'text/html; charset=utf-8';
          ctx.body = problemPage('Service unavailable', description);
        } else {
          ctx.body = { error: 'ServiceUnavailable', description };
        }
      } else {
        log.error({ err: error, requestId: ctx.state.requestId, path: ctx.path }, 'request failed');
        ctx.status = 500;
        ctx.body = { error: 'InternalError', description: 'The broker failed to handle this request; its log has the details.' };
      }
    }
  };
}
