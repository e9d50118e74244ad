import Koa from 'koa';
import type { Logger } from '../log.js';
import type { ServiceBroker } from '../osb/types.js';
import { accessLog } from './middleware/access-log.js';
import { apiVersion } from './middleware/api-version.js';
import { basicAuth } from './middleware/basic-auth.js';
import { errors } from './middleware/errors.js';
import { jsonBody } from './middleware/json-body.js';
import { originatingIdentity } from './middleware/originating-identity.js';
import { requestIdentity } from './middleware/request-identity.js';
import { osbRoutes } from './osb-routes.js';

export interface AppOptions {
  username: string;
  password: string;
  bodyLimitBytes: number;
  log: Logger;
}

/** The Koa adapter. Order matters: auth and version are checked before any body is read. */
export function createApp(broker: ServiceBroker, options: AppOptions): Koa {
  const app = new Koa();
  app.proxy = false;
  const routes = osbRoutes(broker);
  app.use(requestIdentity);
  app.use(accessLog(options.log));
  app.use(errors(options.log));
  app.use(async (ctx, next) => {
    if (ctx.path === '/healthz') {
      ctx.body = { status: 'ok' };
      return;
    }
    await next();
  });
  app.use(basicAuth(options.username, options.password));
  app.use(apiVersion);
  app.use(originatingIdentity);
  app.use(jsonBody(options.bodyLimitBytes));
  app.use(routes.routes());
  app.use(routes.allowedMethods({ throw: false }));
  return app;
}
