import { findPlan, type ServiceDefinition } from '../catalog/definition.js';
import { validateParameters } from '../catalog/parameters.js';
import { badRequest, concurrencyError, conflict, gone, notFound, unavailable, unprocessable } from '../osb/errors.js';
import type {
  BindRequest,
  BindResult,
  BindingView,
  Credentials,
  Endpoint,
  LastOperation,
  Plan,
  RequestMeta,
  ResourceQuery,
  UnbindResult,
} from '../osb/types.js';
import type { BindingRecord, InstanceRecord, OperationRecord } from '../store/records.js';
import { credentialsTemplate, renderCredentials, renderValue, tlsValues } from './credentials.js';
import { checkId, newPassword, newUsername } from './ids.js';
import { afterFirstWrite, busyWith, locked, operationFor, toLastOperation, type LifecycleParts } from './lifecycle-parts.js';
import { mustHandBack, now, reasonOf } from './operations.js';
import { optionalObject } from './request-fields.js';
import { appGuidOf, changedTerms, checkPlanRotates, checkUnchanged, predecessorIdOf, predecessorTerms, type BindingTerms } from './rotation.js';
import { sameJson } from './same.js';

/** Whether an ordinary bind asks for what an existing binding has. */
const sameTerms = (existing: BindingRecord, terms: BindingTerms) =>
  existing.appGuid === terms.appGuid && sameJson(existing.parameters, terms.parameters) && sameJson(existing.bindResource ?? {}, terms.bindResource ?? {});

function checkBindable(definition: ServiceDefinition, plan: Plan): void {
  if (!(plan.bindable ?? definition.offering.bindable)) throw badRequest(`Plan ${plan.name} of ${definition.offering.name} is not bindable.`);
}

interface Issued {
  credentials: Credentials;
  endpoints: Endpoint[];
  syslogDrainUrl?: string;
}

/** Bind, fetch and unbind of service bindings, and their last_operation. */
export class BindingLifecycle {
  constructor(private readonly parts: LifecycleParts) {}

  async bind(instanceId: string, bindingId: string, request: BindRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<BindResult> {
    const { offerings, store, runner, log } = this.parts;
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    const predecessorId = predecessorIdOf(request);
    // An ordinary bind is checked in full before the instance is read; a rotation needs the instance and its predecessor.
    const ordinary = predecessorId === undefined ? this.ordinaryTerms(request) : undefined;
    const context = optionalObject(request.context, 'context');

    return locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw badRequest(`Service instance ${instanceId} does not exist.`);
      const definition = ordinary?.definition ?? (request.service_id === undefined ? offerings.definitionOf(instance) : offerings.service(request.service_id));
      if (instance.serviceId !== definition.offering.id) throw badRequest(`service_id does not match service instance ${instanceId}.`);
      if (!ordinary) this.checkRotatable(definition, instance, request);
      const existing = await store.getBinding(instanceId, bindingId);
      if (existing && existing.state !== 'deleted') {
        // A rotation repeated is recognised by its predecessor, even once that is gone; its terms are the existing binding's.
        const same = ordinary
          ? existing.predecessorBindingId === undefined && sameTerms(existing, ordinary.terms)
          : existing.predecessorBindingId === predecessorId && changedTerms(definition, request, existing).length === 0;
        if (!same) throw conflict(`Service binding ${bindingId} already exists with other attributes.`);
        if (existing.state === 'ready') return { async: false, alreadyExists: true, ...this.issue(definition, instance, existing) };
        if (existing.state === 'creating') {
          // Only a client that allowed an asynchronous answer may be told to poll; any other needs the credentials now.
          if (!asyncAllowed) throw concurrencyError('This service binding is being created.');
          return { async: true, alreadyExists: true, operation: existing.lastOperationId };
        }
        if (existing.state === 'deleting') throw concurrencyError('This service binding is being deleted.');
      }
      const { terms, inheritedContext } = ordinary ?? (await this.successorTerms(definition, instanceId, predecessorId!, request));
      const instanceOperation = await store.getOperation(instance.lastOperationId);
      if (instanceOperation?.state === 'in progress') throw busyWith(instanceOperation);
      if (instance.state !== 'ready') {
        throw unprocessable('InstanceNotUsable', `Service instance ${instanceId} is ${instance.state}; it cannot be bound.`);
      }
      const operation = runner.create('bind', instanceId, 'Binding requested.', bindingId);
      const binding: BindingRecord = {
        id: bindingId,
        instanceId,
        serviceId: instance.serviceId,
        planId: instance.planId,
        appGuid: terms.appGuid,
        bindResource: terms.bindResource,
        context: context ?? inheritedContext,
        parameters: terms.parameters,
        ...(predecessorId === undefined ? {} : { predecessorBindingId: predecessorId }),
        state: 'creating',
        username: existing?.username ?? newUsername(),
        createdAt: now(),
        lastOperationId: operation.id,
        secrets: { password: existing?.secrets.password ?? newPassword(), extra: {} },
      };
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () => store.putBinding(binding));
      log.info({ instanceId, bindingId, operation: operation.id, async: asyncAllowed, ...meta }, 'binding');
      if (asyncAllowed) {
        runner.launch(operation, (signal) => this.runBind(operation, signal));
        return { async: true, alreadyExists: false, operation: operation.id };
      }
      const ready = await runner.runInline(operation, (signal) => this.runBind(operation, signal));
      if (!ready) throw unavailable((await store.getOperation(operation.id))?.description ?? 'Binding failed.');
      return { async: false, alreadyExists: false, ...this.issue(definition, instance, ready) };
    });
  }

  /** An ordinary bind's offering and terms, from the request alone. */
  private ordinaryTerms(request: BindRequest): { definition: ServiceDefinition; terms: BindingTerms; inheritedContext: undefined } {
    const { offerings } = this.parts;
    const definition = offerings.service(request.service_id);
    const plan = offerings.plan(definition, request.plan_id);
    checkBindable(definition, plan);
    const bindResource = optionalObject(request.bind_resource, 'bind_resource');
    const parameters = validateParameters(definition.bindingParameterSchema, request.parameters, 'binding parameters');
    const appGuid = appGuidOf(request, bindResource);
    return { definition, terms: { appGuid, bindResource, parameters }, inheritedContext: undefined };
  }

  /** A rotation's plan (the request's, else the instance's) must be bindable and say binding_rotatable. */
  private checkRotatable(definition: ServiceDefinition, instance: InstanceRecord, request: BindRequest): void {
    const plan = request.plan_id === undefined ? findPlan(definition, instance.planId) : this.parts.offerings.plan(definition, request.plan_id);
    if (!plan) throw badRequest(`The plan of service instance ${instance.id} is no longer in the catalog; its bindings cannot be rotated.`);
    checkBindable(definition, plan);
    checkPlanRotates(definition, plan);
  }

  /** A successor's terms: its predecessor's, and the predecessor's context for a request that sends none. */
  private async successorTerms(definition: ServiceDefinition, instanceId: string, predecessorId: string, request: BindRequest) {
    const predecessor = await this.parts.store.getBinding(instanceId, predecessorId);
    const terms = predecessorTerms(instanceId, predecessorId, predecessor);
    checkUnchanged(definition, request, terms);
    return { terms, inheritedContext: predecessor?.context };
  }

  /** Creates the binding's user; returns the ready binding, or undefined when it failed (the operation says why). */
  async runBind(operation: OperationRecord, signal: AbortSignal): Promise<BindingRecord | undefined> {
    const { offerings, store, runtime, runner, log } = this.parts;
    const instance = await store.getInstance(operation.instanceId);
    const binding = await store.getBinding(operation.instanceId, operation.bindingId!);
    if (!instance || !binding) {
      await runner.finish(operation, 'failed', 'Binding failed: the binding record is missing.');
      return undefined;
    }
    const definition = offerings.definitionOf(instance);
    try {
      const extra = await runtime.bind(definition, instance, binding, signal);
      const ready: BindingRecord = { ...binding, state: 'ready', secrets: { ...binding.secrets, extra } };
      await store.putBinding(ready);
      await runner.finish(operation, 'succeeded', 'The service binding is ready.');
      return ready;
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(error);
      log.error({ instanceId: instance.id, bindingId: binding.id, operation: operation.id, reason }, 'bind failed');
      await runtime.unbind(definition, instance, binding, signal).catch(() => undefined);
      await store.putBinding({ ...binding, state: 'failed' });
      await runner.finish(operation, 'failed', `Binding failed: ${reason}`);
      return undefined;
    }
  }

  /** The credentials, endpoints and drain URL a ready binding hands out. */
  private issue(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord): Issued {
    const host = instance.advertisedHost ?? this.parts.config.advertisedHost;
    const values = {
      host,
      port: instance.hostPort,
      ports: instance.extraHostPorts ?? {},
      params: instance.parameters,
      instance: { id: instance.id },
      admin: { username: definition.container.adminUsername },
      binding: { ...binding.secrets.extra, username: binding.username, password: binding.secrets.password },
      ...tlsValues(definition, instance, this.parts.tls),
    };
    const drain = definition.syslogDrainUrl === undefined ? undefined : renderValue(definition.syslogDrainUrl, values);
    const ports = [instance.hostPort, ...Object.values(instance.extraHostPorts ?? {})].map(String);
    return {
      credentials: renderCredentials(credentialsTemplate(definition, instance.parameters, this.parts.tls !== undefined), values),
      endpoints: [{ host, ports, protocol: 'tcp' }],
      ...(drain === undefined ? {} : { syslogDrainUrl: String(drain) }),
    };
  }

  async fetch(instanceId: string, bindingId: string, _query: ResourceQuery): Promise<BindingView> {
    const { offerings, store } = this.parts;
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    const instance = await store.getInstance(instanceId);
    const binding = await store.getBinding(instanceId, bindingId);
    if (!instance || instance.state === 'deleted' || binding?.state !== 'ready') {
      throw notFound(`Service binding ${bindingId} does not exist.`);
    }
    const { syslogDrainUrl, ...view } = this.issue(offerings.definitionOf(instance), instance, binding);
    return { ...view, parameters: binding.parameters, ...(syslogDrainUrl ? { syslog_drain_url: syslogDrainUrl } : {}) };
  }

  async unbind(instanceId: string, bindingId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<UnbindResult> {
    const { offerings, store, runner, log } = this.parts;
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    const definition = offerings.service(query.service_id);
    offerings.plan(definition, query.plan_id);
    return locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      const binding = await store.getBinding(instanceId, bindingId);
      if (!instance || instance.state === 'deleted' || !binding || binding.state === 'deleted') {
        throw gone(`Service binding ${bindingId} does not exist.`);
      }
      if (binding.state === 'deleting') {
        if (!asyncAllowed) throw concurrencyError('This service binding is being deleted.');
        return { async: true, operation: binding.lastOperationId };
      }
      if (binding.state === 'creating') throw concurrencyError('This service binding is being created.');
      const instanceOperation = await store.getOperation(instance.lastOperationId);
      if (instanceOperation?.state === 'in progress') throw busyWith(instanceOperation);
      const operation = runner.create('unbind', instanceId, 'Unbinding requested.', bindingId);
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () => store.putBinding({ ...binding, state: 'deleting', lastOperationId: operation.id }));
      log.info({ instanceId, bindingId, operation: operation.id, async: asyncAllowed, ...meta }, 'unbinding');
      if (asyncAllowed) {
        runner.launch(operation, (signal) => this.runUnbind(operation, signal));
        return { async: true, operation: operation.id };
      }
      if (!(await runner.runInline(operation, (signal) => this.runUnbind(operation, signal)))) {
        throw unavailable((await store.getOperation(operation.id))?.description ?? 'Unbinding failed.');
      }
      return { async: false };
    });
  }

  async runUnbind(operation: OperationRecord, signal: AbortSignal): Promise<boolean> {
    const { offerings, store, runtime, runner, log } = this.parts;
    const instance = await store.getInstance(operation.instanceId);
    const binding = await store.getBinding(operation.instanceId, operation.bindingId!);
    if (!instance || !binding) {
      await runner.finish(operation, 'succeeded', 'The service binding is deleted.');
      return true;
    }
    try {
      if (binding.state !== 'failed') await runtime.unbind(offerings.definitionOf(instance), instance, binding, signal);
      await store.putBinding({ ...binding, state: 'deleted' });
      await runner.finish(operation, 'succeeded', 'The service binding is deleted.');
      return true;
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(error);
      log.error({ instanceId: instance.id, bindingId: binding.id, operation: operation.id, reason }, 'unbind failed');
      await store.putBinding({ ...binding, state: 'ready' });
      await runner.finish(operation, 'failed', `Unbinding failed: ${reason}`);
      return false;
    }
  }

  async lastOperation(instanceId: string, bindingId: string, query: ResourceQuery): Promise<LastOperation> {
    const { offerings, store } = this.parts;
    checkId(instanceId, 'instance_id');
    checkId(bindingId, 'binding_id');
    offerings.checkOptionalIds(query);
    return toLastOperation(await operationFor(store, instanceId, bindingId, query.operation, `Service binding ${bindingId} does not exist.`));
  }
}
