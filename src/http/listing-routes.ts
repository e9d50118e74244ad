import Router from '@koa/router';
import type { InventoryInstance } from '../broker/broker.js';

/**
 * GET /broker/v1/instances: every instance with its bindings, names from the platform context (instance_name,
 * binding_name), states and dashboard links. Not part of the OSB API; behind the broker's credentials; no secrets.
 */
export function listingRoutes(inventory: () => Promise<InventoryInstance[]>): Router {
  const router = new Router({ prefix: '/broker/v1' });
  router.get('/instances', async (ctx) => {
    ctx.body = { instances: await inventory() };
  });
  return router;
}
