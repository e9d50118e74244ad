/**
 * The broker's own API beyond OSB (GET /broker/v1/instances), as the HTTP layer sends it and the CLI reads it.
 * No secrets travel here.
 */
export interface ListedBinding {
  id: string;
  /** The platform context's binding_name, when a client sent one. */
  name?: string;
  state: string;
  created_at: string;
}

export interface ListedInstance {
  id: string;
  /** The platform context's instance_name, when a client sent one. */
  name?: string;
  service_id: string;
  service_name: string;
  plan_id: string;
  plan_name: string;
  state: string;
  last_operation?: { type: string; state: string; description: string };
  dashboard_url: string;
  created_at: string;
  bindings: ListedBinding[];
}

export interface InstanceListing {
  instances: ListedInstance[];
}
