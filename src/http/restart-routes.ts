import Router from '@koa/router';
import type { InstanceRestart } from '../broker/restart.js';

/** POST /broker/v1/instances/:id/restart: the instance's service restarted, as an operation to poll (OSB last_operation). */
export function restartRoutes(restarts: Pick<InstanceRestart, 'request'>): Router {
  const router = new Router();
  router.post('/broker/v1/instances/:instance_id/restart', async (ctx) => {
    const { operation } = await restarts.request(ctx.params.instance_id!);
    ctx.status = 202;
    ctx.body = { operation };
  });
  return router;
}
