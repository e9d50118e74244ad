/** Open Service Broker API v2.17 shapes, as this broker reads and writes them. */

export type OperationState = 'in progress' | 'succeeded' | 'failed';

export interface MaintenanceInfo {
  version: string;
  description?: string;
}

export interface Schemas {
  service_instance?: {
    create?: { parameters: Record<string, unknown> };
    update?: { parameters: Record<string, unknown> };
  };
  service_binding?: { create?: { parameters: Record<string, unknown> } };
}

export interface Plan {
  id: string;
  name: string;
  description: string;
  free?: boolean;
  bindable?: boolean;
  plan_updateable?: boolean;
  /** 2.17: bindings of this plan may be rotated (a bind with predecessor_binding_id); sent to 2.17 clients only. */
  binding_rotatable?: boolean;
  maximum_polling_duration?: number;
  maintenance_info?: MaintenanceInfo;
  metadata?: Record<string, unknown>;
  schemas?: Schemas;
}

export interface ServiceOffering {
  id: string;
  name: string;
  description: string;
  bindable: boolean;
  tags?: string[];
  requires?: string[];
  instances_retrievable?: boolean;
  bindings_retrievable?: boolean;
  allow_context_updates?: boolean;
  plan_updateable?: boolean;
  metadata?: Record<string, unknown>;
  plans: Plan[];
  /** Cloud Foundry's catalog extension for dashboard SSO: the platform registers this OAuth client at its UAA. */
  dashboard_client?: DashboardClient;
}

export interface DashboardClient {
  id: string;
  secret: string;
  redirect_uri?: string;
}

export interface ProvisionRequest {
  service_id: string;
  plan_id: string;
  organization_guid: string;
  space_guid: string;
  context?: Record<string, unknown>;
  parameters?: Record<string, unknown>;
  maintenance_info?: MaintenanceInfo;
}

export interface UpdateRequest {
  service_id: string;
  plan_id?: string;
  context?: Record<string, unknown>;
  parameters?: Record<string, unknown>;
  maintenance_info?: MaintenanceInfo;
}

export interface BindRequest {
  service_id: string;
  plan_id: string;
  app_guid?: string;
  bind_resource?: Record<string, unknown>;
  context?: Record<string, unknown>;
  parameters?: Record<string, unknown>;
  /** 2.17 rotation: the binding this one succeeds; service_id, plan_id and the terms may then be left out (they are its). */
  predecessor_binding_id?: string;
}

/** Query of DELETE and last_operation requests. */
export interface ResourceQuery {
  service_id?: string;
  plan_id?: string;
  operation?: string;
}

export interface LastOperation {
  state: OperationState;
  description: string;
  instance_usable?: boolean;
  update_repeatable?: boolean;
}

/** A credential field: text, a number (ports), a list, or an object of fields (e.g. mysql2's `ssl: { ca }`). */
export type CredentialValue = string | number | Array<string | number> | { [field: string]: CredentialValue };
export type Credentials = Record<string, CredentialValue>;

export interface Endpoint {
  host: string;
  ports: string[];
  protocol?: 'tcp' | 'udp' | 'all';
}

/** What a lifecycle call tells the HTTP adapter; the adapter alone picks the status code from these flags. */
export interface ProvisionResult {
  async: boolean;
  alreadyExists: boolean;
  operation?: string;
  dashboardUrl?: string;
}
export interface UpdateResult {
  async: boolean;
  operation?: string;
  dashboardUrl?: string;
}
export interface DeprovisionResult {
  async: boolean;
  operation?: string;
}
export interface BindResult {
  async: boolean;
  alreadyExists: boolean;
  operation?: string;
  credentials?: Credentials;
  endpoints?: Endpoint[];
  syslogDrainUrl?: string;
}
export interface UnbindResult {
  async: boolean;
  operation?: string;
}
export interface InstanceView {
  service_id: string;
  plan_id: string;
  dashboard_url?: string;
  parameters: Record<string, unknown>;
  maintenance_info?: MaintenanceInfo;
  /** ServiceInstanceMetadata (2.16+): `attributes` say what is wrong with the instance, when something is. */
  metadata?: { labels?: Record<string, string>; attributes?: Record<string, string> };
}
export interface BindingView {
  credentials: Credentials;
  parameters?: Record<string, unknown>;
  endpoints?: Endpoint[];
  syslog_drain_url?: string;
}

/** Who asked, for logs: parsed from X-Broker-API-Originating-Identity, never required. */
export interface RequestMeta {
  requestId?: string;
  originatingUser?: string;
}

/** One method per endpoint, as platforms see them. */
export interface ServiceBroker {
  catalog(): ServiceOffering[];
  provision(instanceId: string, request: ProvisionRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<ProvisionResult>;
  fetchInstance(instanceId: string, query: ResourceQuery): Promise<InstanceView>;
  update(instanceId: string, request: UpdateRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<UpdateResult>;
  deprovision(instanceId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<DeprovisionResult>;
  lastInstanceOperation(instanceId: string, query: ResourceQuery): Promise<LastOperation>;
  bind(instanceId: string, bindingId: string, request: BindRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<BindResult>;
  fetchBinding(instanceId: string, bindingId: string, query: ResourceQuery): Promise<BindingView>;
  unbind(instanceId: string, bindingId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<UnbindResult>;
  lastBindingOperation(instanceId: string, bindingId: string, query: ResourceQuery): Promise<LastOperation>;
}
