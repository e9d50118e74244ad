import type { Middleware } from 'koa';
import { BrokerError } from '../../osb/errors.js';
import type { Logger } from '../../log.js';

/** Turns thrown BrokerErrors into their status and JSON body; anything else is a 500 without internals. */
export function errors(log: Logger): Middleware {
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
      } else {
        log.error({ err: error, requestId: ctx.state.requestId, path: ctx.path }, 'request failed');
        ctx.status = 500;
        ctx.body = { error: 'InternalError', description: 'The broker failed to handle this request; its log has the details.' };
      }
    }
  };
}
