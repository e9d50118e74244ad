import { findPlan, type ServiceDefinition } from '../catalog/definition.js';
import { badRequest } from '../osb/errors.js';
import type { Plan, ResourceQuery, ServiceOffering } from '../osb/types.js';
import type { InstanceRecord } from '../store/records.js';
import { requireString } from './request-fields.js';

/** The loaded catalog, looked up the way requests name things: a bad id is the client's 400. */
export class Offerings {
  private readonly byId: Map<string, ServiceDefinition>;

  constructor(definitions: ServiceDefinition[]) {
    this.byId = new Map(definitions.map((definition) => [definition.offering.id, definition]));
  }

  offerings(): ServiceOffering[] {
    return [...this.byId.values()].map((definition) => definition.offering);
  }

  /** The offering named by a request's service_id. */
  service(serviceId: unknown): ServiceDefinition {
    const id = requireString(serviceId, 'service_id');
    const definition = this.byId.get(id);
    if (!definition) throw badRequest(`service_id ${id} is not in the catalog.`);
    return definition;
  }

  plan(definition: ServiceDefinition, planId: unknown): Plan {
    const id = requireString(planId, 'plan_id');
    const plan = findPlan(definition, id);
    if (!plan) throw badRequest(`plan_id ${id} is not a plan of ${definition.offering.name}.`);
    return plan;
  }

  /** service_id and plan_id are optional on last_operation; when given they must be right. */
  checkOptionalIds(query: ResourceQuery): void {
    if (query.service_id === undefined) return;
    const definition = this.service(query.service_id);
    if (query.plan_id !== undefined) this.plan(definition, query.plan_id);
  }

  /** The definition a stored instance runs on; its absence is the operator's problem, not the client's. */
  definitionOf(instance: InstanceRecord): ServiceDefinition {
    const definition = this.byId.get(instance.serviceId);
    if (!definition) throw new Error(`service ${instance.serviceId} of instance ${instance.id} is no longer in the catalog`);
    return definition;
  }

  /** Offering and plan names for listings; ids stand in for what the catalog no longer has. */
  namesOf(instance: InstanceRecord): { service: string; plan: string } {
    const definition = this.byId.get(instance.serviceId);
    return {
      service: definition?.offering.name ?? instance.serviceId,
      plan: (definition && findPlan(definition, instance.planId)?.name) ?? instance.planId,
    };
  }
}
