import Router from '@koa/router';
import type { InstanceListing, ListedInstance } from '../api/listing.js';

/**
 * GET /broker/v1/instances: every instance with its bindings, names from the platform context (instance_name,
 * binding_name), states and dashboard links. Not part of the OSB API; behind the broker's credentials; no secrets.
 */
export function listingRoutes(listing: () => Promise<ListedInstance[]>): Router {
  const router = new Router({ prefix: '/broker/v1' });
  router.get('/instances', async (ctx) => {
    const body: InstanceListing = { instances: await listing() };
    ctx.body = body;
  });
  return router;
}
