import Koa from 'koa';
import type { Server } from 'node:http';
import type { Logger } from '../log.js';
import { metricsRoute, type MetricsText } from './health-routes.js';
import { errors } from './middleware/errors.js';

/**
 * A second listener (BROKER_METRICS_LISTEN) that serves GET /metrics without credentials, for a Prometheus on a
 * trusted network; every other path is 404.
 */
export async function listenForMetrics(metrics: MetricsText, host: string, port: number, log: Logger): Promise<Server> {
  const app = new Koa();
  app.proxy = false;
  app.on('error', (error: Error) => log.error({ reason: error.message }, 'metrics response failed'));
  app.use(errors(log));
  app.use(metricsRoute(metrics));
  return new Promise<Server>((resolve, reject) => {
    const server = app.listen(port, host, () => resolve(server));
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new Error(
          error.code === 'EADDRINUSE'
            ? `${host}:${port} (BROKER_METRICS_LISTEN) is already in use; set BROKER_METRICS_LISTEN to another address`
            : `cannot listen on ${host}:${port} (BROKER_METRICS_LISTEN): ${error.message}`,
        ),
      ),
    );
  });
}
