import Koa, { type Middleware } from 'koa';
import compose from 'koa-compose';
import { IncomingMessage, ServerResponse } from 'node:http';
import type Router from '@koa/router';
import type { ListedInstance } from '../api/listing.js';
import type { Logger } from '../log.js';
import type { ServiceBroker } from '../osb/types.js';
import { catalogFastPath } from './catalog-fast-path.js';
import { dashboardRoutes, type DashboardOptions } from './dashboard-routes.js';
import { accessLine, accessLog } from './middleware/access-log.js';
import { apiVersion } from './middleware/api-version.js';
import { basicAuth } from './middleware/basic-auth.js';
import { errors } from './middleware/errors.js';
import { httpMetrics, type RequestObserver } from './middleware/http-metrics.js';
import { healthRoutes, metricsRoute, type MetricsText, type ReadinessSource } from './health-routes.js';
import { jsonBody } from './middleware/json-body.js';
import { originatingIdentity } from './middleware/originating-identity.js';
import { requestIdentity } from './middleware/request-identity.js';
import { catalogCache, catalogEndpoint, osbRoutes } from './osb-routes.js';
import { listingRoutes } from './listing-routes.js';
import { dashboardLinkRoutes } from './dashboard-link-routes.js';
import { operatorRoutes } from './operator-routes.js';
import { backupRoutes, restoreRoutes } from './backup-routes.js';
import { restartRoutes } from './restart-routes.js';
import type { InstanceRestart } from '../broker/restart.js';
import type { BackupService } from '../broker/backups.js';
import type { InPlaceRestore } from '../broker/in-place-restore.js';
import type { BackupScheduler } from '../broker/backup-schedule.js';

export interface AppOptions {
  username: string;
  password: string;
  bodyLimitBytes: number;
  log: Logger;
  /** Without it, no dashboard routes are served (the HTTP status tests run the OSB part alone). */
  dashboard?: Omit<DashboardOptions, 'brokerAuth'>;
  /** Without it, no listing route is served. */
  listing?: () => Promise<ListedInstance[]>;
  /** Without it, no backup routes are served. */
  backups?: BackupService;
  /** The backup list's `schedule` (next run, last success and failure); without it the list has none. */
  backupSchedules?: Pick<BackupScheduler, 'describe'>;
  /** Without it, POST /broker/v1/instances/:id/restore (in-place restore) is not served. */
  restores?: InPlaceRestore;
  /** Without it, POST /broker/v1/instances/:id/restart is not served. */
  restarts?: Pick<InstanceRestart, 'request'>;
  /** Without it, POST /broker/v1/instances/:id/dashboard-link (a new lifelong dashboard link) is not served. */
  rotateDashboardLink?: (instanceId: string) => Promise<string>;
  /** Without it, /readyz is not served (/healthz always is). */
  checks?: ReadinessSource;
  /** Without it, requests are not counted and /metrics is not served; with it, /metrics needs the broker's credentials. */
  metrics?: MetricsText & RequestObserver;
  /**
   * GET and HEAD /v2/catalog answered in front of Koa (catalog-fast-path.ts), the same answers at a fraction of the
   * cost; on unless false (the test that compares the two turns it off).
   */
  catalogFastPath?: boolean;
}

const under =
  (prefix: string, middleware: Middleware): Middleware =>
  (ctx, next) =>
    ctx.path === prefix || ctx.path.startsWith(`${prefix}/`) ? (middleware(ctx, next) as Promise<void>) : next();

// The router's context type is narrower than Koa's; at run time they are the same middleware.
const routerMiddleware = (router: Router) => [router.routes(), router.allowedMethods({ throw: false })] as unknown as Middleware[];

/** The Koa adapter. Order matters: on /v2, auth and version are checked before any body is read. */
export function createApp(broker: ServiceBroker, options: AppOptions): Koa {
  const app = new Koa();
  app.proxy = false;
  // A client that leaves a live log stream is normal, not an error; nor is one that sends bytes HTTP's parser
  // refuses (Node answers those with 400 itself), which anyone could otherwise use to fill the log.
  app.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'ERR_STREAM_PREMATURE_CLOSE' || error.code === 'ECONNRESET' || error.code === 'EPIPE') return;
    if (error.code?.startsWith('HPE_')) return;
    options.log.error({ reason: error.message }, 'response failed');
  });
  const auth = basicAuth(options.username, options.password);
  const catalogs = catalogCache(broker);
  const catalog = catalogEndpoint(broker, catalogs);
  const osb = osbRoutes(broker, catalog);
  const line = accessLine(options.log);
  app.use(requestIdentity);
  app.use(accessLog(line));
  if (options.metrics) app.use(httpMetrics(options.metrics));
  app.use(errors(options.log));
  app.use(healthRoutes(options.checks));
  if (options.metrics) app.use(metricsRoute(options.metrics, auth));
  app.use(under('/v2', compose([auth, apiVersion, originatingIdentity, catalog, jsonBody(options.bodyLimitBytes), ...routerMiddleware(osb)])));
  const brokerApi = [
    ...(options.listing ? routerMiddleware(listingRoutes(options.listing)) : []),
    ...(options.backups ? routerMiddleware(backupRoutes(options.backups, options.backupSchedules)) : []),
    ...(options.restores ? routerMiddleware(restoreRoutes(options.restores)) : []),
    ...(options.rotateDashboardLink ? routerMiddleware(dashboardLinkRoutes(options.rotateDashboardLink)) : []),
    // An instance's details and logs as the dashboard reads them (operator-routes.ts).
    ...(options.dashboard ? routerMiddleware(operatorRoutes(options.dashboard.service)) : []),
    ...(options.restarts ? routerMiddleware(restartRoutes(options.restarts)) : []),
  ];
  if (brokerApi.length) app.use(under('/broker', compose([auth, ...brokerApi])));
  if (options.dashboard) {
    const dashboard = dashboardRoutes({ ...options.dashboard, brokerAuth: auth });
    app.use(under('/dashboard', compose(routerMiddleware(dashboard))));
  }
  if (options.catalogFastPath !== false) {
    // In front of Koa's own handler, so app.listen() and app.callback() both get it; what it leaves goes to Koa.
    const { username, password, metrics } = options;
    const fast = catalogFastPath({ username, password, catalog: catalogs, accessLine: line, metrics });
    const koaCallback = app.callback.bind(app);
    const answered = Promise.resolve();
    app.callback = () => {
      const koa = koaCallback();
      return (request, response) =>
        request instanceof IncomingMessage && response instanceof ServerResponse && fast(request, response) ? answered : koa(request, response);
    };
  }
  return app;
}
