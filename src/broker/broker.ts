import type { Config } from '../config.js';
import { findPlan, planUpdateable, type ServiceDefinition } from '../catalog/definition.js';
import { validateParameters } from '../catalog/parameters.js';
import { PortInUseError } from '../docker/engine.js';
import type { Logger } from '../log.js';
import {
  asyncRequired, badRequest, concurrencyError, conflict, gone, maintenanceInfoConflict, notFound, unavailable, unprocessable,
} from '../osb/errors.js';
import type {
  BindRequest, BindResult, BindingView, Credentials, DeprovisionResult, Endpoint, InstanceView, LastOperation, ProvisionRequest,
  ProvisionResult, RequestMeta, ResourceQuery, ServiceBroker, ServiceOffering, UnbindResult, UpdateRequest, UpdateResult,
} from '../osb/types.js';
import type { BindingRecord, InstanceRecord, OperationRecord, OperationType, UpdateTarget } from '../store/records.js';
import { LockTimeoutError, type RedisStore } from '../store/redis-store.js';
import { renderCredentials, renderValue } from './credentials.js';
import { checkId, newOperationId, newPassword, newUsername } from './ids.js';
import { portIsFree } from './probe.js';
import { InstanceRuntime } from './runtime.js';
import { sameJson } from './same.js';

export interface InventoryInstance {
  id: string;
  name?: string;
  service_id: string;
  service_name: string;
  plan_id: string;
  plan_name: string;
  state: string;
  last_operation?: { type: string; state: string; description: string };
  dashboard_url: string;
  created_at: string;
  bindings: Array<{ id: string; name?: string; state: string; created_at: string }>;
}

interface Running {
  operationId: string;
  controller: AbortController;
  done: Promise<void>;
}

class Cancelled extends Error {}

const now = () => new Date().toISOString();

/** The lifecycle: OSB semantics on top of the store (state) and the runtime (containers). */
export class DockerBroker implements ServiceBroker {
  private readonly definitions: Map<string, ServiceDefinition>;
  private readonly running = new Map<string, Running>();

  constructor(
    private readonly config: Config,
    definitions: ServiceDefinition[],
    private readonly store: RedisStore,
    private readonly runtime: InstanceRuntime,
    private readonly log: Logger,
    /** The instance's dashboard URL, with a fresh access token each time. */
    readonly dashboardUrl: (instanceId: string) => string,
  ) {
    this.definitions = new Map(definitions.map((definition) => [definition.offering.id, definition]));
  }

  catalog(): ServiceOffering[] {
    return [...this.definitions.values()].map((definition) => definition.offering);
  }

  // Provision

  async provision(instanceId: string, request: ProvisionRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<ProvisionResult> {
    checkId(instanceId, 'instance_id');
    const definition = this.service(request.service_id);
    const plan = this.plan(definition, request.plan_id);
    requireString(request.organization_guid, 'organization_guid');
    requireString(request.space_guid, 'space_guid');
    const context = optionalObject(request.context, 'context');
    const requestedParameters = (request.parameters ?? {}) as Record<string, unknown>;
    const parameters = validateParameters(definition.parameterSchema, request.parameters, 'parameters');
    const requestedVersion = maintenanceVersion(request.maintenance_info);
    if (requestedVersion !== undefined && requestedVersion !== definition.maintenanceInfo.version) {
      throw maintenanceInfoConflict(definition.maintenanceInfo.version);
    }
    const dashboardUrl = this.dashboardUrl(instanceId);

    return this.locked(instanceId, async () => {
      const existing = await this.store.getInstance(instanceId);
      if (existing && existing.state !== 'deleted') {
        const same =
          existing.serviceId === request.service_id &&
          existing.planId === plan.id &&
          existing.organizationGuid === request.organization_guid &&
          existing.spaceGuid === request.space_guid &&
          sameJson(existing.requestedParameters, requestedParameters);
        if (!same) throw conflict(`Service instance ${instanceId} already exists with other attributes.`);
        if (existing.state === 'ready') return { async: false, alreadyExists: true, dashboardUrl };
        if (existing.state === 'provisioning') {
          return { async: true, alreadyExists: true, operation: existing.lastOperationId, dashboardUrl };
        }
        if (existing.state === 'deprovisioning') throw concurrencyError('This service instance is being deprovisioned.');
        // A failed provision asked again: try again with the same record (and port, if it had one).
      }
      if (!asyncAllowed) throw asyncRequired();
      const operation = this.newOperation('provision', instanceId, 'Provisioning requested.');
      const record: InstanceRecord = {
        id: instanceId,
        serviceId: definition.offering.id,
        planId: plan.id,
        organizationGuid: request.organization_guid,
        spaceGuid: request.space_guid,
        context: context ?? {},
        requestedParameters,
        parameters,
        maintenanceVersion: definition.maintenanceInfo.version,
        state: 'provisioning',
        containerName: InstanceRuntime.containerName(this.config.brokerId, instanceId),
        volumeName: `${InstanceRuntime.containerName(this.config.brokerId, instanceId)}-data`,
        hostPort: existing?.state === 'failed' ? existing.hostPort : undefined,
        createdAt: existing?.state === 'failed' ? existing.createdAt : now(),
        updatedAt: now(),
        lastOperationId: operation.id,
        secrets: existing?.state === 'failed' ? existing.secrets : { adminPassword: newPassword() },
      };
      await this.store.putOperation(operation);
      await this.store.putInstance(record);
      this.log.info({ instanceId, operation: operation.id, service: definition.offering.name, plan: plan.name, ...meta }, 'provisioning');
      this.launch(instanceId, operation, (signal) => this.runProvision(operation, signal));
      return { async: true, alreadyExists: false, operation: operation.id, dashboardUrl };
    });
  }

  /** Runs (or resumes) a provision operation to its end; everything it made is removed if it fails. */
  async runProvision(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const instanceId = operation.instanceId;
    let instance = await this.store.getInstance(instanceId);
    if (!instance) return;
    const definition = this.definitionOf(instance);
    const progress = (description: string) => this.progress(operation, description);
    try {
      for (let attempt = 1; ; attempt++) {
        instance = await this.reservePorts(instance, operation);
        try {
          await this.runtime.start(definition, instance, signal, progress);
          break;
        } catch (error) {
          // Something outside the broker took the port between our check and the start: take another one.
          if (!(error instanceof PortInUseError) || attempt >= 3) throw error;
          await this.runtime.destroy(instance);
          await this.store.releasePortsOf(instanceId);
          this.log.warn({ instanceId, port: instance.hostPort, extraPorts: instance.extraHostPorts }, 'host port taken by another process; choosing others');
          instance = { ...instance, hostPort: undefined, extraHostPorts: undefined };
        }
      }
      await this.finishInstance(operation, instanceId, (current) => ({ ...current, state: 'ready' }), 'succeeded', 'The service instance is ready.');
    } catch (error) {
      if (signal.aborted) {
        await this.finishOperation(operation, 'failed', 'Provisioning was cancelled by a deprovision request.');
        return;
      }
      const reason = describe(error);
      this.log.error({ instanceId, operation: operation.id, reason }, 'provisioning failed');
      await this.runtime.destroy(instance).catch((cleanupError) =>
        this.log.error({ instanceId, reason: describe(cleanupError) }, 'cleanup after failed provision failed'));
      await this.store.releasePortsOf(instanceId);
      await this.finishInstance(operation, instanceId, (current) => ({ ...current, state: 'failed', hostPort: undefined, extraHostPorts: undefined }), 'failed', `Provisioning failed: ${reason}`);
    }
  }

  /** Reserves the main host port and one per extra port of the offering, and records them on the instance. */
  private async reservePorts(instance: InstanceRecord, operation: OperationRecord): Promise<InstanceRecord> {
    if (instance.hostPort) return instance;
    // The record is the truth: whatever a killed broker reserved without recording it is given back first.
    await this.store.releasePortsOf(instance.id);
    const reserve = async () => {
      const port = await this.store.reservePort(instance.id, this.config.portRange, (candidate) => portIsFree(this.config.publishIp, candidate));
      if (!port) {
        await this.store.releasePortsOf(instance.id);
        throw new Error(`no free host port left in BROKER_PORT_RANGE ${this.config.portRange.first}-${this.config.portRange.last}`);
      }
      return port;
    };
    const hostPort = await reserve();
    const extraHostPorts: Record<string, number> = {};
    for (const name of Object.keys(this.definitionOf(instance).container.extraPorts)) extraHostPorts[name] = await reserve();
    // Read-modify-write under the lock, and only while this operation still owns the record: a deprovision that
    // took over meanwhile must not be overwritten with this operation's stale copy.
    return this.store.withLock(instance.id, async () => {
      const current = await this.store.getInstance(instance.id);
      if (!current || current.lastOperationId !== operation.id) {
        await this.store.releasePortsOf(instance.id);
        throw new Cancelled('a deprovision took over this instance');
      }
      const updated = { ...current, hostPort, extraHostPorts, updatedAt: now() };
      await this.store.putInstance(updated);
      return updated;
    }, 60_000);
  }

  // Fetch instance

  async fetchInstance(instanceId: string, _query: ResourceQuery): Promise<InstanceView> {
    checkId(instanceId, 'instance_id');
    const instance = await this.store.getInstance(instanceId);
    if (!instance || instance.state === 'deleted' || instance.state === 'provisioning' || (instance.state === 'failed' && !instance.hostPort)) {
      throw notFound(`Service instance ${instanceId} does not exist.`);
    }
    const operation = await this.store.getOperation(instance.lastOperationId);
    if (operation?.state === 'in progress' && operation.type === 'update') throw concurrencyError('This service instance is being updated.');
    return {
      service_id: instance.serviceId,
      plan_id: instance.planId,
      dashboard_url: this.dashboardUrl(instanceId),
      parameters: instance.parameters,
      maintenance_info: { version: instance.maintenanceVersion },
    };
  }

  // Update

  async update(instanceId: string, request: UpdateRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<UpdateResult> {
    checkId(instanceId, 'instance_id');
    const definition = this.service(request.service_id);
    if (request.plan_id !== undefined) this.plan(definition, request.plan_id);
    const context = optionalObject(request.context, 'context');
    const requestedVersion = maintenanceVersion(request.maintenance_info);
    if (requestedVersion !== undefined && requestedVersion !== definition.maintenanceInfo.version) {
      throw maintenanceInfoConflict(definition.maintenanceInfo.version);
    }

    return this.locked(instanceId, async () => {
      const instance = await this.store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
      if (instance.serviceId !== definition.offering.id) throw badRequest(`service_id does not match service instance ${instanceId}.`);
      const requestedParameters = request.parameters === undefined
        ? instance.requestedParameters
        : { ...instance.requestedParameters, ...(optionalObject(request.parameters, 'parameters') ?? {}) };
      const target: UpdateTarget = {
        planId: request.plan_id ?? instance.planId,
        requestedParameters,
        parameters: validateParameters(definition.parameterSchema, requestedParameters, 'parameters'),
        maintenanceVersion: requestedVersion ?? instance.maintenanceVersion,
      };

      const lastOperation = await this.store.getOperation(instance.lastOperationId);
      if (lastOperation?.state === 'in progress') {
        if (lastOperation.type === 'update' && sameJson(lastOperation.update, target)) {
          return { async: true, operation: lastOperation.id, dashboardUrl: this.dashboardUrl(instanceId) };
        }
        throw concurrencyError();
      }
      if (instance.state !== 'ready') {
        throw unprocessable('InstanceNotUsable', `Service instance ${instanceId} is ${instance.state}; deprovision it and provision again.`);
      }

      const currentPlan = findPlan(definition, instance.planId)!;
      const planChange = target.planId !== instance.planId;
      if (planChange && !planUpdateable(definition, currentPlan)) {
        throw unprocessable('PlanChangeNotSupported', `Plan ${currentPlan.name} cannot be changed to another plan.`);
      }
      const changed = Object.keys({ ...instance.parameters, ...target.parameters })
        .filter((name) => !sameJson(instance.parameters[name], target.parameters[name]));
      const fixed = changed.filter((name) => !definition.updatableParameters.includes(name));
      if (fixed.length > 0) {
        const updatable = definition.updatableParameters.length ? definition.updatableParameters.join(', ') : 'none';
        throw unprocessable('ParameterNotUpdatable', `Parameter ${fixed.join(', ')} cannot be changed after provisioning (updatable parameters: ${updatable}).`);
      }
      const upgrade = target.maintenanceVersion !== instance.maintenanceVersion;
      const contextChanged = context !== undefined && !sameJson(context, instance.context);

      if (!planChange && changed.length === 0 && !upgrade) {
        if (contextChanged) await this.store.putInstance({ ...instance, context: context!, updatedAt: now() });
        return { async: false };
      }
      if (!asyncAllowed) throw asyncRequired();
      const operation: OperationRecord = { ...this.newOperation('update', instanceId, 'Update requested.'), update: target };
      await this.store.putOperation(operation);
      await this.store.putInstance({ ...instance, context: contextChanged ? context! : instance.context, lastOperationId: operation.id, updatedAt: now() });
      this.log.info({ instanceId, operation: operation.id, planChange, parameters: changed, upgrade, ...meta }, 'updating');
      this.launch(instanceId, operation, (signal) => this.runUpdate(operation, signal));
      return { async: true, operation: operation.id, dashboardUrl: this.dashboardUrl(instanceId) };
    });
  }

  async runUpdate(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const instance = await this.store.getInstance(operation.instanceId);
    const target = operation.update;
    if (!instance || !target) return;
    const definition = this.definitionOf(instance);
    const updated: InstanceRecord = { ...instance, planId: target.planId, parameters: target.parameters, requestedParameters: target.requestedParameters, maintenanceVersion: target.maintenanceVersion };
    try {
      if (target.maintenanceVersion !== instance.maintenanceVersion) {
        await this.runtime.recreate(definition, updated, signal, (description) => this.progress(operation, description));
      } else {
        const planChange = target.planId !== instance.planId;
        if (planChange) {
          await this.progress(operation, 'Applying the new plan\'s limits to the running container.');
          await this.runtime.applyLimits(definition, instance, target.planId);
        }
        // configure also follows a plan change, so an engine can size itself to the new limits (e.g. Redis maxmemory).
        if (planChange || !sameJson(target.parameters, instance.parameters)) {
          await this.progress(operation, 'Applying the new settings.');
          await this.runtime.configure(definition, updated, signal);
        }
      }
      await this.finishInstance(operation, instance.id, (current) => ({ ...current, ...pick(updated) }), 'succeeded', 'The service instance is updated.');
    } catch (error) {
      const reason = describe(error);
      this.log.error({ instanceId: instance.id, operation: operation.id, reason }, 'update failed');
      const container = await this.runtime.inspect(instance).catch(() => undefined);
      await this.finishOperation(operation, 'failed', `Update failed: ${reason}`, { instanceUsable: Boolean(container?.running), updateRepeatable: true });
    }
  }

  // Deprovision

  async deprovision(instanceId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<DeprovisionResult> {
    checkId(instanceId, 'instance_id');
    const definition = this.service(query.service_id);
    // Any plan of the offering is accepted: a platform may still hold the plan from before an update.
    this.plan(definition, query.plan_id);
    return this.locked(instanceId, async () => {
      const instance = await this.store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw gone(`Service instance ${instanceId} does not exist.`);
      if (instance.serviceId !== definition.offering.id) throw badRequest(`service_id does not match service instance ${instanceId}.`);
      const lastOperation = await this.store.getOperation(instance.lastOperationId);
      if (lastOperation?.state === 'in progress') {
        if (lastOperation.type === 'deprovision') return { async: true, operation: lastOperation.id };
        if (lastOperation.type === 'update') throw concurrencyError('This service instance is being updated.');
      }
      const busyBinding = (await this.store.listBindings(instanceId)).find((binding) => binding.state === 'creating' || binding.state === 'deleting');
      if (busyBinding) throw concurrencyError(`Service binding ${busyBinding.id} is being ${busyBinding.state === 'creating' ? 'created' : 'deleted'}.`);
      if (!asyncAllowed) throw asyncRequired();
      // A deprovision during provisioning stops the creation; runDeprovision waits for it to let go.
      this.running.get(instanceId)?.controller.abort(new Cancelled('deprovision requested'));
      const operation = this.newOperation('deprovision', instanceId, 'Deprovisioning requested.');
      await this.store.putOperation(operation);
      await this.store.putInstance({ ...instance, state: 'deprovisioning', lastOperationId: operation.id, updatedAt: now() });
      this.log.info({ instanceId, operation: operation.id, ...meta }, 'deprovisioning');
      this.launch(instanceId, operation, () => this.runDeprovision(operation));
      return { async: true, operation: operation.id };
    });
  }

  async runDeprovision(operation: OperationRecord): Promise<void> {
    const instance = await this.store.getInstance(operation.instanceId);
    if (!instance) return;
    try {
      await this.progress(operation, 'Removing the container, its volume and its bindings.');
      await this.runtime.destroy(instance);
      await this.store.deleteBindingsOf(instance.id);
      await this.store.releasePortsOf(instance.id);
      await this.finishInstance(operation, instance.id, (current) => ({ ...current, state: 'deleted', hostPort: undefined, extraHostPorts: undefined }), 'succeeded', 'The service instance is deleted.');
    } catch (error) {
      const reason = describe(error);
      this.log.error({ instanceId: instance.id, operation: operation.id, reason }, 'deprovision failed');
      await this.finishInstance(operation, instance.id, (current) => ({ ...current, state: 'failed' }), 'failed', `Deprovisioning failed: ${reason}`, { instanceUsable: false });
    }
  }

  // Instance last operation

  async lastInstanceOperation(instanceId: string, query: ResourceQuery): Promise<LastOperation> {
    checkId(instanceId, 'instance_id');
    this.checkOptionalIds(query);
    const instance = await this.store.getInstance(instanceId);
    if (!instance) throw notFound(`Service instance ${instanceId} does not exist.`);
    return toLastOperation(await this.operationFor(instance.lastOperationId, query.operation, (op) => op.instanceId === instanceId && !op.bindingId));
  }

  // Bind

  async bind(instanceId: string, bindingId: string, request: BindRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<BindResult> {
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    const definition = this.service(request.service_id);
    const plan = this.plan(definition, request.plan_id);
    if (!(plan.bindable ?? definition.offering.bindable)) throw badRequest(`Plan ${plan.name} of ${definition.offering.name} is not bindable.`);
    const bindResource = optionalObject(request.bind_resource, 'bind_resource');
    const context = optionalObject(request.context, 'context');
    const parameters = validateParameters(definition.bindingParameterSchema, request.parameters, 'binding parameters');
    const appGuid = (typeof bindResource?.app_guid === 'string' ? bindResource.app_guid : undefined) ?? request.app_guid;

    return this.locked(instanceId, async () => {
      const instance = await this.store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw badRequest(`Service instance ${instanceId} does not exist.`);
      if (instance.serviceId !== definition.offering.id) throw badRequest(`service_id does not match service instance ${instanceId}.`);
      const existing = await this.store.getBinding(instanceId, bindingId);
      if (existing && existing.state !== 'deleted') {
        const same = existing.appGuid === appGuid && sameJson(existing.parameters, parameters) && sameJson(existing.bindResource ?? {}, bindResource ?? {});
        if (!same) throw conflict(`Service binding ${bindingId} already exists with other attributes.`);
        if (existing.state === 'ready') return { async: false, alreadyExists: true, ...this.credentialsOf(definition, instance, existing) };
        if (existing.state === 'creating') return { async: true, alreadyExists: true, operation: existing.lastOperationId };
        if (existing.state === 'deleting') throw concurrencyError('This service binding is being deleted.');
      }
      const instanceOperation = await this.store.getOperation(instance.lastOperationId);
      if (instanceOperation?.state === 'in progress') throw concurrencyError();
      if (instance.state !== 'ready') {
        throw unprocessable('InstanceNotUsable', `Service instance ${instanceId} is ${instance.state}; it cannot be bound.`);
      }
      const operation = this.newOperation('bind', instanceId, 'Binding requested.', bindingId);
      const binding: BindingRecord = {
        id: bindingId,
        instanceId,
        serviceId: instance.serviceId,
        planId: instance.planId,
        appGuid,
        bindResource,
        context,
        parameters,
        state: 'creating',
        username: existing?.username ?? newUsername(),
        createdAt: now(),
        lastOperationId: operation.id,
        secrets: { password: existing?.secrets.password ?? newPassword(), extra: {} },
      };
      await this.store.putOperation(operation);
      await this.store.putBinding(binding);
      this.log.info({ instanceId, bindingId, operation: operation.id, async: asyncAllowed, ...meta }, 'binding');
      if (asyncAllowed) {
        this.launch(`${instanceId}/${bindingId}`, operation, (signal) => this.runBind(operation, signal));
        return { async: true, alreadyExists: false, operation: operation.id };
      }
      const ready = await this.runBind(operation, new AbortController().signal);
      if (!ready) throw unavailable((await this.store.getOperation(operation.id))?.description ?? 'Binding failed.');
      return { async: false, alreadyExists: false, ...this.credentialsOf(definition, instance, ready) };
    });
  }

  /** Creates the binding's user; returns the ready binding, or undefined when it failed (the operation says why). */
  async runBind(operation: OperationRecord, signal: AbortSignal): Promise<BindingRecord | undefined> {
    const instance = await this.store.getInstance(operation.instanceId);
    const binding = await this.store.getBinding(operation.instanceId, operation.bindingId!);
    if (!instance || !binding) return undefined;
    try {
      const extra = await this.runtime.bind(this.definitionOf(instance), instance, binding, signal);
      const ready: BindingRecord = { ...binding, state: 'ready', secrets: { ...binding.secrets, extra } };
      await this.store.putBinding(ready);
      await this.finishOperation(operation, 'succeeded', 'The service binding is ready.');
      return ready;
    } catch (error) {
      const reason = describe(error);
      this.log.error({ instanceId: instance.id, bindingId: binding.id, operation: operation.id, reason }, 'bind failed');
      await this.runtime.unbind(this.definitionOf(instance), instance, binding, signal).catch(() => undefined);
      await this.store.putBinding({ ...binding, state: 'failed' });
      await this.finishOperation(operation, 'failed', `Binding failed: ${reason}`);
      return undefined;
    }
  }

  private credentialsOf(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord): { credentials: Credentials; endpoints: Endpoint[]; syslogDrainUrl?: string } {
    const values = {
      host: this.config.advertisedHost,
      port: instance.hostPort,
      ports: instance.extraHostPorts ?? {},
      params: instance.parameters,
      instance: { id: instance.id },
      admin: { username: definition.container.adminUsername },
      binding: { ...binding.secrets.extra, username: binding.username, password: binding.secrets.password },
    };
    const drain = definition.syslogDrainUrl === undefined ? undefined : renderValue(definition.syslogDrainUrl, values);
    const ports = [instance.hostPort, ...Object.values(instance.extraHostPorts ?? {})].map(String);
    return {
      credentials: renderCredentials(definition.credentials, values),
      endpoints: [{ host: this.config.advertisedHost, ports, protocol: 'tcp' }],
      ...(drain === undefined ? {} : { syslogDrainUrl: String(drain) }),
    };
  }

  // Fetch binding

  async fetchBinding(instanceId: string, bindingId: string, _query: ResourceQuery): Promise<BindingView> {
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    const instance = await this.store.getInstance(instanceId);
    const binding = await this.store.getBinding(instanceId, bindingId);
    if (!instance || instance.state === 'deleted' || binding?.state !== 'ready') {
      throw notFound(`Service binding ${bindingId} does not exist.`);
    }
    const { syslogDrainUrl, ...view } = this.credentialsOf(this.definitionOf(instance), instance, binding);
    return { ...view, parameters: binding.parameters, ...(syslogDrainUrl ? { syslog_drain_url: syslogDrainUrl } : {}) };
  }

  // Unbind

  async unbind(instanceId: string, bindingId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<UnbindResult> {
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    const definition = this.service(query.service_id);
    this.plan(definition, query.plan_id);
    return this.locked(instanceId, async () => {
      const instance = await this.store.getInstance(instanceId);
      const binding = await this.store.getBinding(instanceId, bindingId);
      if (!instance || instance.state === 'deleted' || !binding || binding.state === 'deleted') {
        throw gone(`Service binding ${bindingId} does not exist.`);
      }
      if (binding.state === 'deleting') return { async: true, operation: binding.lastOperationId };
      if (binding.state === 'creating') throw concurrencyError('This service binding is being created.');
      const instanceOperation = await this.store.getOperation(instance.lastOperationId);
      if (instanceOperation?.state === 'in progress') throw concurrencyError();
      const operation = this.newOperation('unbind', instanceId, 'Unbinding requested.', bindingId);
      await this.store.putOperation(operation);
      await this.store.putBinding({ ...binding, state: 'deleting', lastOperationId: operation.id });
      this.log.info({ instanceId, bindingId, operation: operation.id, async: asyncAllowed, ...meta }, 'unbinding');
      if (asyncAllowed) {
        this.launch(`${instanceId}/${bindingId}`, operation, (signal) => this.runUnbind(operation, signal));
        return { async: true, operation: operation.id };
      }
      if (!(await this.runUnbind(operation, new AbortController().signal))) {
        throw unavailable((await this.store.getOperation(operation.id))?.description ?? 'Unbinding failed.');
      }
      return { async: false };
    });
  }

  async runUnbind(operation: OperationRecord, signal: AbortSignal): Promise<boolean> {
    const instance = await this.store.getInstance(operation.instanceId);
    const binding = await this.store.getBinding(operation.instanceId, operation.bindingId!);
    if (!instance || !binding) return false;
    try {
      if (binding.state !== 'failed') await this.runtime.unbind(this.definitionOf(instance), instance, binding, signal);
      await this.store.putBinding({ ...binding, state: 'deleted' });
      await this.finishOperation(operation, 'succeeded', 'The service binding is deleted.');
      return true;
    } catch (error) {
      const reason = describe(error);
      this.log.error({ instanceId: instance.id, bindingId: binding.id, operation: operation.id, reason }, 'unbind failed');
      await this.store.putBinding({ ...binding, state: 'ready' });
      await this.finishOperation(operation, 'failed', `Unbinding failed: ${reason}`);
      return false;
    }
  }

  async lastBindingOperation(instanceId: string, bindingId: string, query: ResourceQuery): Promise<LastOperation> {
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    this.checkOptionalIds(query);
    const binding = await this.store.getBinding(instanceId, bindingId);
    if (!binding) throw notFound(`Service binding ${bindingId} does not exist.`);
    return toLastOperation(await this.operationFor(binding.lastOperationId, query.operation, (op) => op.bindingId === bindingId && op.instanceId === instanceId));
  }

  // Listing (not part of the OSB API)

  /** Every live instance with its bindings, for clients that work with names rather than ids. No secrets. */
  async inventory(): Promise<InventoryInstance[]> {
    const instances = await this.store.listInstances();
    return Promise.all(instances.sort((a, b) => a.createdAt.localeCompare(b.createdAt)).map(async (instance) => {
      const definition = this.definitions.get(instance.serviceId);
      const [operation, bindings] = await Promise.all([this.store.getOperation(instance.lastOperationId), this.store.listBindings(instance.id)]);
      const name = instance.context.instance_name;
      return {
        id: instance.id,
        ...(typeof name === 'string' && name ? { name } : {}),
        service_id: instance.serviceId,
        service_name: definition?.offering.name ?? instance.serviceId,
        plan_id: instance.planId,
        plan_name: definition?.offering.plans.find((plan) => plan.id === instance.planId)?.name ?? instance.planId,
        state: instance.state,
        ...(operation ? { last_operation: { type: operation.type, state: operation.state, description: operation.description } } : {}),
        dashboard_url: this.dashboardUrl(instance.id),
        created_at: instance.createdAt,
        bindings: bindings.sort((a, b) => a.createdAt.localeCompare(b.createdAt)).map((binding) => {
          const bindingName = binding.context?.binding_name;
          return {
            id: binding.id,
            ...(typeof bindingName === 'string' && bindingName ? { name: bindingName } : {}),
            state: binding.state,
            created_at: binding.createdAt,
          };
        }),
      };
    }));
  }

  // Operations

  /** Resumes an operation a previous broker process left in progress. */
  resume(operation: OperationRecord): void {
    const key = operation.bindingId ? `${operation.instanceId}/${operation.bindingId}` : operation.instanceId;
    const work: Record<OperationType, (signal: AbortSignal) => Promise<unknown>> = {
      provision: (signal) => this.runProvision(operation, signal),
      update: (signal) => this.runUpdate(operation, signal),
      deprovision: () => this.runDeprovision(operation),
      bind: (signal) => this.runBind(operation, signal),
      unbind: (signal) => this.runUnbind(operation, signal),
    };
    this.log.info({ instanceId: operation.instanceId, bindingId: operation.bindingId, operation: operation.id, type: operation.type }, 'resuming operation');
    this.launch(key, operation, work[operation.type]);
  }

  /** Waits for every running operation; used at shutdown and by tests. */
  async settle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()].map((running) => running.done));
  }

  private launch(key: string, operation: OperationRecord, work: (signal: AbortSignal) => Promise<unknown>): void {
    const previous = this.running.get(key);
    const controller = new AbortController();
    const done = (async () => {
      // One operation at a time per resource: a deprovision waits for the provision it cancelled.
      if (previous) await previous.done;
      await work(controller.signal);
    })()
      .catch((error) => this.log.error({ operation: operation.id, reason: describe(error) }, 'operation crashed'))
      .finally(() => {
        if (this.running.get(key)?.operationId === operation.id) this.running.delete(key);
      });
    this.running.set(key, { operationId: operation.id, controller, done });
  }

  private newOperation(type: OperationType, instanceId: string, description: string, bindingId?: string): OperationRecord {
    return { id: newOperationId(), type, instanceId, bindingId, state: 'in progress', description, createdAt: now() };
  }

  private async progress(operation: OperationRecord, description: string): Promise<void> {
    operation.description = description;
    await this.store.putOperation(operation);
  }

  private async finishOperation(operation: OperationRecord, state: 'succeeded' | 'failed', description: string, extra: Partial<OperationRecord> = {}): Promise<void> {
    Object.assign(operation, { state, description, finishedAt: now(), ...extra });
    await this.store.putOperation(operation);
  }

  /** Ends an instance operation and updates the instance record under the instance lock. */
  private async finishInstance(operation: OperationRecord, instanceId: string, change: (current: InstanceRecord) => InstanceRecord, state: 'succeeded' | 'failed', description: string, extra: Partial<OperationRecord> = {}): Promise<void> {
    await this.store.withLock(instanceId, async () => {
      const current = await this.store.getInstance(instanceId);
      // A deprovision that took over owns the record now.
      if (current && current.lastOperationId === operation.id) await this.store.putInstance({ ...change(current), updatedAt: now() });
      await this.finishOperation(operation, state, description, extra);
    }, 60_000);
  }

  private async operationFor(latestId: string, requestedId: string | undefined, belongs: (operation: OperationRecord) => boolean): Promise<OperationRecord> {
    // Unknown operation values fall back to the resource's latest operation.
    const requested = requestedId ? await this.store.getOperation(requestedId) : undefined;
    const operation = requested && belongs(requested) ? requested : await this.store.getOperation(latestId);
    if (!operation) throw notFound('No operation is known for this resource.');
    return operation;
  }

  private async locked<T>(instanceId: string, work: () => Promise<T>): Promise<T> {
    try {
      return await this.store.withLock(instanceId, work);
    } catch (error) {
      if (error instanceof LockTimeoutError) throw concurrencyError();
      throw error;
    }
  }

  // Catalog look-ups

  definitionOf(instance: InstanceRecord): ServiceDefinition {
    const definition = this.definitions.get(instance.serviceId);
    if (!definition) throw new Error(`service ${instance.serviceId} of instance ${instance.id} is no longer in the catalog`);
    return definition;
  }

  private service(serviceId: unknown): ServiceDefinition {
    const id = requireString(serviceId, 'service_id');
    const definition = this.definitions.get(id);
    if (!definition) throw badRequest(`service_id ${id} is not in the catalog.`);
    return definition;
  }

  private plan(definition: ServiceDefinition, planId: unknown) {
    const id = requireString(planId, 'plan_id');
    const plan = findPlan(definition, id);
    if (!plan) throw badRequest(`plan_id ${id} is not a plan of ${definition.offering.name}.`);
    return plan;
  }

  private checkOptionalIds(query: ResourceQuery): void {
    if (query.service_id === undefined) return;
    const definition = this.service(query.service_id);
    if (query.plan_id !== undefined) this.plan(definition, query.plan_id);
  }
}

function requireString(value: unknown, name: string): string {
  if (typeof value !== 'string' || value === '') throw badRequest(`${name} is missing or empty.`);
  return value;
}

function optionalObject(value: unknown, name: string): Record<string, unknown> | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw badRequest(`${name} must be a JSON object.`);
  return value as Record<string, unknown>;
}

/** `maintenance_info` without a version (or `{}`) counts as absent. */
function maintenanceVersion(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw badRequest('maintenance_info must be a JSON object.');
  const version = (value as { version?: unknown }).version;
  if (version === undefined || version === '') return undefined;
  if (typeof version !== 'string') throw badRequest('maintenance_info.version must be a string.');
  return version;
}

function toLastOperation(operation: OperationRecord): LastOperation {
  const failedUpdateOrDelete = operation.state === 'failed' && (operation.type === 'update' || operation.type === 'deprovision');
  return {
    state: operation.state,
    description: operation.description,
    ...(failedUpdateOrDelete && operation.instanceUsable !== undefined ? { instance_usable: operation.instanceUsable } : {}),
    ...(failedUpdateOrDelete && operation.type === 'update' && operation.updateRepeatable !== undefined ? { update_repeatable: operation.updateRepeatable } : {}),
  };
}

function pick(record: InstanceRecord): Partial<InstanceRecord> {
  const { planId, parameters, requestedParameters, maintenanceVersion: version } = record;
  return { planId, parameters, requestedParameters, maintenanceVersion: version };
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
