import type { ListedContainer, ListedHealth, ListedInstance } from '../api/listing.js';
import type { HealthRecord, InstanceRecord } from '../store/records.js';
import type { InstanceContainers, InstanceRuntime, StateStore } from './contracts.js';
import type { LinkedInstance } from './dashboard-link.js';
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
export async function listInstances(
  store: StateStore,
  offerings: Offerings,
  dashboardUrl: (instance: LinkedInstance) => string,
  live?: LiveState,
): Promise<ListedInstance[]> {
  const containers = live && 'inspect' in live.runtime ? (live.runtime as unknown as InstanceContainers) : undefined;
  const instances = await store.listInstances();
  return Promise.all(
    instances
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
      .map(async (instance) => {
        const names = offerings.namesOf(instance);
        const [operation, bindings, health, container] = await Promise.all([
          store.getOperation(instance.lastOperationId),
          store.listBindings(instance.id),
          instance.state === 'ready' ? store.getHealth(instance.id) : undefined,
          instance.state === 'ready' && containers ? containerState(containers, instance) : undefined,
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
          ...(container ? { container } : {}),
          ...(instance.hostPort ? { endpoint: `${instance.advertisedHost ?? live?.advertisedHost ?? 'localhost'}:${instance.hostPort}` } : {}),
          dashboard_url: dashboardUrl(instance),
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

/** What the listing reads besides the store: the advertised host of published ports, and the runtime for live states. */
export interface LiveState {
  advertisedHost: string;
  runtime: InstanceRuntime;
}

/** The engine's own word on a ready instance's container, read at each listing: a killed one is not "ready". */
async function containerState(containers: InstanceContainers, instance: InstanceRecord): Promise<ListedContainer> {
  const { secrets: _secrets, ...withoutSecrets } = instance;
  const summary = await containers.inspect(withoutSecrets).catch(() => undefined);
  if (!summary) return { state: 'missing' };
  return { state: summary.status, ...(!summary.running && summary.exitCode !== undefined ? { exit_code: summary.exitCode } : {}) };
}
