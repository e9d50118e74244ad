import Router from '@koa/router';

/**
 * POST /broker/v1/instances/:id/dashboard-link: a new lifelong dashboard link for the instance, answered as
 * `dashboard_url`. The old link, and dashboard sessions opened with it, stop working at once.
 */
export function dashboardLinkRoutes(rotate: (instanceId: string) => Promise<string>): Router {
  const router = new Router();
  router.post('/broker/v1/instances/:instance_id/dashboard-link', async (ctx) => {
    ctx.body = { dashboard_url: await rotate(ctx.params.instance_id!) };
  });
  return router;
}
