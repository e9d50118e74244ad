import type { MaintenanceInfo, Plan, ServiceOffering } from '../osb/types.js';

/** Resource limits of a plan, applied to the instance's container. */
export interface Limits {
  memoryMb: number;
  cpus: number;
  pids: number;
}

/** How the broker runs one engine's containers; read from the `container` block of service.json. */
export interface ContainerSpec {
  port: number;
  dataPath: string;
  execUser?: string;
  adminUsername: string;
  capDrop: string[];
  capAdd: string[];
  stopTimeoutSeconds: number;
  readyTimeoutSeconds: number;
}

/** One catalog folder, validated: the OSB offering plus what the broker needs to run it. */
export interface ServiceDefinition {
  folder: string;
  offering: ServiceOffering;
  maintenanceInfo: MaintenanceInfo;
  limits: Map<string, Limits>;
  parameterSchema: Record<string, unknown>;
  bindingParameterSchema: Record<string, unknown>;
  updatableParameters: string[];
  container: ContainerSpec;
  credentials: Record<string, string>;
  /** Image repository without tag; the tag is the maintenance version. */
  imageRepository: string;
}

export const imageTag = (definition: ServiceDefinition) =>
  `${definition.imageRepository}:${definition.maintenanceInfo.version}`;

export function findPlan(definition: ServiceDefinition, planId: string): Plan | undefined {
  return definition.offering.plans.find((plan) => plan.id === planId);
}

export function planUpdateable(definition: ServiceDefinition, plan: Plan): boolean {
  return plan.plan_updateable ?? definition.offering.plan_updateable ?? false;
}
