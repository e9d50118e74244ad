import type { ServiceOffering } from '../osb/types.js';
import { atLeast, type ApiVersion } from '../osb/version.js';

/** Fields newer than the client's API version are left out (rule: emit only what the version knows). */
export function catalogFor(offerings: ServiceOffering[], version: ApiVersion): { services: unknown[] } {
  return {
    services: offerings.map((offering) => {
      const service: Record<string, unknown> = { ...offering };
      if (!atLeast(version, 14)) {
        delete service.instances_retrievable;
        delete service.bindings_retrievable;
      }
      if (!atLeast(version, 15)) delete service.allow_context_updates;
      service.plans = offering.plans.map((plan) => {
        const copy: Record<string, unknown> = { ...plan };
        if (!atLeast(version, 15)) {
          delete copy.plan_updateable;
          delete copy.maintenance_info;
          delete copy.maximum_polling_duration;
        }
        if (!atLeast(version, 17)) delete copy.binding_rotatable;
        return copy;
      });
      return service;
    }),
  };
}
