import type { ListedHealth, ListedInstance } from '../api/listing.js';
import type { HealthRecord } from '../store/records.js';
import type { StateStore } from './contracts.js';
import type { Offerings } from './offerings.js';
import { describeHealth } from './reconciler.js';

const contextName = (context: Record<string, unknown> | undefined, field: string) => {
  const name = context?.[field];
  return typeof name === 'string' && name ? { name } : {};
};

const listedHealth = (health: HealthRecord): ListedHealth => ({
  state: health.state,
  since: health.since,
  ...(health.reason ? { reason: health.reason } : {}),
  ...(health.cause ? { cause: health.cause } : {}),
  ...(health.repairedAt ? { repaired_at: health.repairedAt } : {}),
  summary: describeHealth(health),
});

/** Every live instance with its bindings, oldest first, named from the platform context. No secrets. */
export async function listInstances(store: StateStore, offerings: Offerings, dashboardUrl: (instanceId: string) => string): Promise<ListedInstance[]> {
  const instances = await store.listInstances();
  return Promise.all(
    instances
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
      .map(async (instance) => {
        const names = offerings.namesOf(instance);
        const [operation, bindings, health] = await Promise.all([
          store.getOperation(instance.lastOperationId),
          store.listBindings(instance.id),
          instance.state === 'ready' ? store.getHealth(instance.id) : undefined,
        ]);
        return {
          id: instance.id,
          ...contextName(instance.context, 'instance_name'),
          service_id: instance.serviceId,
          service_name: names.service,
          plan_id: instance.planId,
          plan_name: names.plan,
          state: instance.state,
          ...(operation ? { last_operation: { type: operation.type, state: operation.state, description: operation.description } } : {}),
          ...(health ? { health: listedHealth(health) } : {}),
          dashboard_url: dashboardUrl(instance.id),
          created_at: instance.createdAt,
          bindings: bindings
            .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
            .map((binding) => ({
              id: binding.id,
              ...contextName(binding.context, 'binding_name'),
              state: binding.state,
              created_at: binding.createdAt,
              ...(binding.predecessorBindingId ? { predecessor_id: binding.predecessorBindingId } : {}),
            })),
        };
      }),
  );
}
