import { findPlan, planUpdateable } from '../catalog/definition.js';
import { validateParameters } from '../catalog/parameters.js';
import { asyncRequired, badRequest, concurrencyError, conflict, gone, maintenanceInfoConflict, notFound, unprocessable } from '../osb/errors.js';
import type {
  DeprovisionResult,
  InstanceView,
  LastOperation,
  ProvisionRequest,
  ProvisionResult,
  RequestMeta,
  ResourceQuery,
  UpdateRequest,
  UpdateResult,
} from '../osb/types.js';
import type { InstanceRecord, OperationRecord, UpdateTarget } from '../store/records.js';
import { PortTakenError } from './contracts.js';
import { reserveHostPorts, reserveNewExtraPorts } from './host-ports.js';
import { placeInstance } from './place-instance.js';
import { checkId, instanceResourceNames, newPassword } from './ids.js';
import { afterFirstWrite, busyWith, locked, operationFor, toLastOperation, type LifecycleParts } from './lifecycle-parts.js';
import { mustHandBack, now, reasonOf } from './operations.js';
import { maintenanceVersion, optionalObject, requireString } from './request-fields.js';
import { sameJson } from './same.js';
import { describeHealth } from './reconciler.js';
import { backupScheduleParameter } from './backup-schedule.js';
import { withDashboardLink } from './dashboard-link.js';

/** Provision, fetch, update and deprovision of service instances, and their last_operation. */
export class InstanceLifecycle {
  constructor(private readonly parts: LifecycleParts) {}

  async provision(instanceId: string, request: ProvisionRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<ProvisionResult> {
    const { offerings, store, runner, log, config } = this.parts;
    checkId(instanceId, 'instance_id');
    const definition = offerings.service(request.service_id);
    const plan = offerings.plan(definition, request.plan_id);
    requireString(request.organization_guid, 'organization_guid');
    requireString(request.space_guid, 'space_guid');
    const context = optionalObject(request.context, 'context');
    const requestedParameters = request.parameters ?? {};
    // restore_from and clone_of are the broker's own parameters, valid for every offering with backups; the rest is the offering's.
    const { restore_from: restoreRequest, clone_of: cloneRequest, backup_schedule: scheduleRequest, ...ownParameters } = request.parameters ?? {};
    const parameters = validateParameters(definition.parameterSchema, request.parameters && ownParameters, 'parameters');
    const backupSchedule = backupScheduleParameter(scheduleRequest, definition);
    const requestedVersion = maintenanceVersion(request.maintenance_info);
    if (requestedVersion !== undefined && requestedVersion !== definition.maintenanceInfo.version) {
      throw maintenanceInfoConflict(definition.maintenanceInfo.version);
    }
    let restoreFrom: InstanceRecord['restoreFrom'];
    let cloneOf: InstanceRecord['cloneOf'];
    if (restoreRequest !== undefined || cloneRequest !== undefined) {
      const name = restoreRequest !== undefined ? 'restore_from' : 'clone_of';
      if (!this.parts.backups || !definition.backups.supported) throw badRequest(`${name}: ${definition.offering.name} instances have no backups.`);
      if (restoreRequest !== undefined && cloneRequest !== undefined) throw badRequest('restore_from and clone_of cannot be used together: choose one source.');
      const target = { serviceId: definition.offering.id, organizationGuid: request.organization_guid, spaceGuid: request.space_guid };
      if (restoreRequest !== undefined) restoreFrom = await this.parts.backups.authorise(restoreRequest, target);
      else cloneOf = await this.parts.backups.authoriseClone(cloneRequest, target);
    }

    return locked(store, instanceId, async () => {
      const existing = await store.getInstance(instanceId);
      if (existing && existing.state !== 'deleted') {
        const same =
          existing.serviceId === request.service_id &&
          existing.planId === plan.id &&
          existing.organizationGuid === request.organization_guid &&
          existing.spaceGuid === request.space_guid &&
          sameJson(existing.requestedParameters, requestedParameters);
        if (!same) throw conflict(`Service instance ${instanceId} already exists with other attributes.`);
        const dashboardUrl = this.parts.dashboardUrl(existing);
        if (existing.state === 'ready') return { async: false, alreadyExists: true, dashboardUrl };
        if (existing.state === 'provisioning') {
          if (!asyncAllowed) throw asyncRequired();
          return { async: true, alreadyExists: true, operation: existing.lastOperationId, dashboardUrl };
        }
        if (existing.state === 'deprovisioning') throw concurrencyError('This service instance is being deprovisioned.');
        // A failed provision asked again: try again with the same record (and port, if it had one).
      }
      if (!asyncAllowed) throw asyncRequired();
      const operation = runner.create('provision', instanceId, 'Provisioning requested.');
      const retry = existing?.state === 'failed' ? existing : undefined;
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
        // A failed provision tried again keeps its names: its volume may hold data already.
        ...(retry
          ? { containerName: retry.containerName, volumeName: retry.volumeName }
          : instanceResourceNames(config.brokerId, instanceId, contextName(context))),
        hostPort: retry?.hostPort,
        createdAt: retry?.createdAt ?? now(),
        updatedAt: now(),
        lastOperationId: operation.id,
        secrets: withDashboardLink(retry?.secrets ?? { adminPassword: newPassword() }),
        restoreFrom,
        cloneOf,
        backupSchedule,
      };
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () => store.putInstance(record));
      log.info({ instanceId, operation: operation.id, service: definition.offering.name, plan: plan.name, ...meta }, 'provisioning');
      runner.launch(operation, (signal) => this.runProvision(operation, signal));
      return { async: true, alreadyExists: false, operation: operation.id, dashboardUrl: this.parts.dashboardUrl(record) };
    });
  }

  /** Runs (or resumes) a provision to its end; everything it made is removed if it fails. */
  async runProvision(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const { offerings, store, runtime, runner, log, config, portIsFree, placement } = this.parts;
    const instanceId = operation.instanceId;
    let instance = await store.getInstance(instanceId);
    // Nothing to continue without its record (a write after the operation's own failed): end it, or every sweep would find it again.
    if (!instance) return runner.finish(operation, 'failed', 'Provisioning failed: the instance record is missing.');
    if (instance.lastOperationId !== operation.id) {
      // Continued after its process died, but a deprovision took over meanwhile.
      await runner.finish(operation, 'failed', 'Provisioning was cancelled by a deprovision request.');
      return;
    }
    const definition = offerings.definitionOf(instance);
    const progress = (description: string) => runner.progress(operation, description);
    try {
      if (placement) instance = await placeInstance(store, placement, offerings, definition, instance, operation);
      // Ports another process took under us: not chosen again by this provision, even if they look free by then (the
      // broker may see another network namespace than the engine's, or the taker holds the port between probes).
      const takenByOthers = new Set<number>();
      const freeForUs: typeof portIsFree = async (port, target) => !takenByOthers.has(port) && (await portIsFree(port, target));
      for (let attempt = 1; ; attempt++) {
        instance = await reserveHostPorts(store, config, freeForUs, definition, instance, operation);
        try {
          await runtime.start(definition, instance, signal, progress);
          break;
        } catch (error) {
          // Something outside the broker took the port between our check and the start: take another one.
          if (!(error instanceof PortTakenError) || attempt >= 3) throw error;
          for (const port of [instance.hostPort, ...Object.values(instance.extraHostPorts ?? {})]) if (port !== undefined) takenByOthers.add(port);
          await runtime.destroy(instance);
          await store.releasePortsOf(instanceId);
          log.warn({ instanceId, port: instance.hostPort, extraPorts: instance.extraHostPorts }, 'host port taken by another process; choosing others');
          instance = { ...instance, hostPort: undefined, extraHostPorts: undefined };
        }
      }
      if (instance.cloneOf && !instance.restoreFrom) instance = await this.takeCloneBackup(operation, instance);
      if (instance.restoreFrom) {
        const { instanceId: source, backupId } = instance.restoreFrom;
        await progress(`Restoring backup ${backupId} of instance ${source}.`);
        await this.parts.backups!.restoreInto(definition, instance, instance.restoreFrom, signal);
      }
      await runner.finishInstance(operation, (current) => ({ ...current, state: 'ready' }), 'succeeded', 'The service instance is ready.');
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      if (signal.aborted) {
        await runner.finish(operation, 'failed', 'Provisioning was cancelled by a deprovision request.');
        return;
      }
      const reason = reasonOf(error);
      log.error({ instanceId, operation: operation.id, reason }, 'provisioning failed');
      await runtime
        .destroy(instance)
        .catch((cleanupError: unknown) => log.error({ instanceId, reason: reasonOf(cleanupError) }, 'cleanup after failed provision failed'));
      await store.releasePortsOf(instanceId);
      await runner.finishInstance(
        operation,
        (current) => ({ ...current, state: 'failed', hostPort: undefined, extraHostPorts: undefined }),
        'failed',
        `Provisioning failed: ${reason}`,
      );
    }
  }

  /**
   * clone_of's first step: a fresh backup of the live source, recorded as the new instance's restoreFrom, so a process
   * that continues the provision restores that same backup. A source that is no longer ready fails the provision.
   */
  private async takeCloneBackup(operation: OperationRecord, instance: InstanceRecord): Promise<InstanceRecord> {
    const { store, runner } = this.parts;
    const source = instance.cloneOf!;
    await runner.progress(operation, `Backing up instance ${source} to clone it.`);
    const backup = await this.parts.backups!.backUpNow(source).catch((error: unknown) => {
      throw new Error(`instance ${source} could not be backed up for the clone: ${reasonOf(error)}`, { cause: error });
    });
    if (backup.state !== 'succeeded') throw new Error(`instance ${source} could not be backed up for the clone: ${backup.description ?? backup.state}`);
    const updated: InstanceRecord = { ...instance, restoreFrom: { instanceId: source, backupId: backup.id } };
    await store.withLock(instance.id, async () => {
      const current = await store.getInstance(instance.id);
      if (current?.lastOperationId !== operation.id) throw new Error('a deprovision took over the instance');
      await store.putInstance({ ...current, restoreFrom: updated.restoreFrom, updatedAt: now() });
    });
    return updated;
  }

  async fetch(instanceId: string, _query: ResourceQuery): Promise<InstanceView> {
    const { store } = this.parts;
    checkId(instanceId, 'instance_id');
    const instance = await store.getInstance(instanceId);
    if (!instance || instance.state === 'deleted' || instance.state === 'provisioning' || (instance.state === 'failed' && !instance.hostPort)) {
      throw notFound(`Service instance ${instanceId} does not exist.`);
    }
    const operation = await store.getOperation(instance.lastOperationId);
    if (operation?.state === 'in progress' && operation.type === 'update') throw concurrencyError('This service instance is being updated.');
    // What the engine really runs, when it is not what the record promises.
    const health = instance.state === 'ready' ? await store.getHealth(instanceId) : undefined;
    return {
      service_id: instance.serviceId,
      plan_id: instance.planId,
      dashboard_url: this.parts.dashboardUrl(instance),
      parameters: instance.parameters,
      maintenance_info: { version: instance.maintenanceVersion },
      ...(health?.state === 'down' ? { metadata: { attributes: { health: 'down', down_since: health.since, health_reason: describeHealth(health) } } } : {}),
    };
  }

  async update(instanceId: string, request: UpdateRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<UpdateResult> {
    const { offerings, store, runner, log } = this.parts;
    checkId(instanceId, 'instance_id');
    const definition = offerings.service(request.service_id);
    if (request.plan_id !== undefined) offerings.plan(definition, request.plan_id);
    const context = optionalObject(request.context, 'context');
    const requestedVersion = maintenanceVersion(request.maintenance_info);
    if (requestedVersion !== undefined && requestedVersion !== definition.maintenanceInfo.version) {
      throw maintenanceInfoConflict(definition.maintenanceInfo.version);
    }
    // null or absent leaves the instance's schedule as it is.
    const scheduleChange = backupScheduleParameter(optionalObject(request.parameters, 'parameters')?.backup_schedule, definition);

    return locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw notFound(`Service instance ${instanceId} does not exist.`);
      if (instance.serviceId !== definition.offering.id) throw badRequest(`service_id does not match service instance ${instanceId}.`);
      const changes = optionalObject(request.parameters, 'parameters') ?? {};
      const sourceParameter = SOURCE_PARAMETERS.find((name) => name in changes);
      if (sourceParameter) {
        throw badRequest(`${sourceParameter} is taken at provision only; to restore into this instance, use POST /broker/v1/instances/${instanceId}/restore.`);
      }
      const requestedParameters = request.parameters === undefined ? instance.requestedParameters : { ...instance.requestedParameters, ...changes };
      // backup_schedule is the broker's own parameter (checked above), not the offering's.
      const { backup_schedule: _schedule, ...offeringRequested } = requestedParameters;
      const target: UpdateTarget = {
        planId: request.plan_id ?? instance.planId,
        requestedParameters,
        parameters: validateParameters(definition.parameterSchema, withoutSource(offeringRequested), 'parameters'),
        maintenanceVersion: requestedVersion ?? instance.maintenanceVersion,
      };

      const lastOperation = await store.getOperation(instance.lastOperationId);
      if (lastOperation?.state === 'in progress') {
        if (lastOperation.type === 'update' && sameJson(lastOperation.update, target)) {
          if (!asyncAllowed) throw asyncRequired();
          return { async: true, operation: lastOperation.id, dashboardUrl: this.parts.dashboardUrl(instance) };
        }
        throw busyWith(lastOperation);
      }
      if (instance.state !== 'ready') {
        throw unprocessable('InstanceNotUsable', `Service instance ${instanceId} is ${instance.state}; deprovision it and provision again.`);
      }

      const currentPlan = findPlan(definition, instance.planId)!;
      const planChange = target.planId !== instance.planId;
      if (planChange && !planUpdateable(definition, currentPlan)) {
        throw unprocessable('PlanChangeNotSupported', `Plan ${currentPlan.name} cannot be changed to another plan.`);
      }
      const changed = Object.keys({ ...instance.parameters, ...target.parameters }).filter(
        (name) => !sameJson(instance.parameters[name], target.parameters[name]),
      );
      const fixed = changed.filter((name) => !definition.updatableParameters.includes(name));
      if (fixed.length > 0) {
        const updatable = definition.updatableParameters.length ? definition.updatableParameters.join(', ') : 'none';
        throw unprocessable(
          'ParameterNotUpdatable',
          `Parameter ${fixed.join(', ')} cannot be changed after provisioning (updatable parameters: ${updatable}).`,
        );
      }
      const upgrade = target.maintenanceVersion !== instance.maintenanceVersion;
      const contextChanged = context !== undefined && !sameJson(context, instance.context);
      // A new backup schedule applies at once, with or without an update operation.
      const backupSchedule = scheduleChange ?? instance.backupSchedule;
      const scheduleChanged = backupSchedule !== instance.backupSchedule;

      // An instance made before lifelong dashboard links gets one now; the platform keeps the URL this answer carries.
      const secrets = withDashboardLink(instance.secrets);
      if (!planChange && changed.length === 0 && !upgrade) {
        if (contextChanged || scheduleChanged || secrets !== instance.secrets) {
          await store.putInstance({ ...instance, context: contextChanged ? context : instance.context, backupSchedule, secrets, updatedAt: now() });
        }
        return { async: false, dashboardUrl: this.parts.dashboardUrl({ ...instance, secrets }) };
      }
      if (!asyncAllowed) throw asyncRequired();
      const operation: OperationRecord = { ...runner.create('update', instanceId, 'Update requested.'), update: target };
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () =>
        store.putInstance({
          ...instance,
          context: contextChanged ? context : instance.context,
          backupSchedule,
          secrets,
          lastOperationId: operation.id,
          updatedAt: now(),
        }),
      );
      log.info({ instanceId, operation: operation.id, planChange, parameters: changed, upgrade, ...meta }, 'updating');
      runner.launch(operation, (signal) => this.runUpdate(operation, signal));
      return { async: true, operation: operation.id, dashboardUrl: this.parts.dashboardUrl({ ...instance, secrets }) };
    });
  }

  async runUpdate(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const { offerings, store, runtime, runner, log } = this.parts;
    const instance = await store.getInstance(operation.instanceId);
    const target = operation.update;
    if (!instance || !target) return runner.finish(operation, 'failed', 'Update failed: the instance record is missing.');
    const definition = offerings.definitionOf(instance);
    let updated: InstanceRecord = {
      ...instance,
      planId: target.planId,
      parameters: target.parameters,
      requestedParameters: target.requestedParameters,
      maintenanceVersion: target.maintenanceVersion,
    };
    try {
      if (target.maintenanceVersion !== instance.maintenanceVersion) {
        // A new version may publish more ports (a TLS listener): they get host ports before the new container is made.
        const { config, portIsFree } = this.parts;
        updated = await reserveNewExtraPorts(store, config, portIsFree, definition, updated, operation);
        await runtime.recreate(definition, updated, signal, (description) => runner.progress(operation, description));
      } else {
        const planChange = target.planId !== instance.planId;
        if (planChange) {
          await runner.progress(operation, "Applying the new plan's limits to the running container.");
          await runtime.applyLimits(definition, instance, target.planId);
        }
        // configure also follows a plan change, so an engine can size itself to the new limits (e.g. Redis maxmemory).
        if (planChange || !sameJson(target.parameters, instance.parameters)) {
          await runner.progress(operation, 'Applying the new settings.');
          await runtime.configure(definition, updated, signal);
        }
      }
      const { planId, parameters, requestedParameters, maintenanceVersion: version } = updated;
      await runner.finishInstance(
        operation,
        (current) => ({ ...current, planId, parameters, requestedParameters, maintenanceVersion: version }),
        'succeeded',
        'The service instance is updated.',
      );
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(error);
      log.error({ instanceId: instance.id, operation: operation.id, reason }, 'update failed');
      const container = await runtime.inspect(instance).catch(() => undefined);
      await runner.finish(operation, 'failed', `Update failed: ${reason}`, { instanceUsable: Boolean(container?.running), updateRepeatable: true });
    }
  }

  async deprovision(instanceId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<DeprovisionResult> {
    const { offerings, store, runner, log } = this.parts;
    checkId(instanceId, 'instance_id');
    const definition = offerings.service(query.service_id);
    // Any plan of the offering is accepted: a platform may still hold the plan from before an update.
    offerings.plan(definition, query.plan_id);
    return locked(store, instanceId, async () => {
      const instance = await store.getInstance(instanceId);
      if (!instance || instance.state === 'deleted') throw gone(`Service instance ${instanceId} does not exist.`);
      if (instance.serviceId !== definition.offering.id) throw badRequest(`service_id does not match service instance ${instanceId}.`);
      const lastOperation = await store.getOperation(instance.lastOperationId);
      if (lastOperation?.state === 'in progress') {
        if (lastOperation.type === 'deprovision') {
          if (!asyncAllowed) throw asyncRequired();
          return { async: true, operation: lastOperation.id };
        }
        if (lastOperation.type === 'update') throw concurrencyError('This service instance is being updated.');
        if (lastOperation.type === 'restore') throw concurrencyError('A backup is being restored into this service instance.');
      }
      const busyBinding = (await store.listBindings(instanceId)).find((binding) => binding.state === 'creating' || binding.state === 'deleting');
      if (busyBinding) throw concurrencyError(`Service binding ${busyBinding.id} is being ${busyBinding.state === 'creating' ? 'created' : 'deleted'}.`);
      if (!asyncAllowed) throw asyncRequired();
      // A deprovision during provisioning stops the creation; the runner starts this one once it has let go.
      runner.cancel(instanceId, 'deprovision requested');
      const operation: OperationRecord = {
        ...runner.create('deprovision', instanceId, 'Deprovisioning requested.'),
        ...(lastOperation?.state === 'in progress' ? { supersedes: lastOperation.id } : {}),
      };
      await runner.record(operation);
      await afterFirstWrite(runner, operation, () =>
        store.putInstance({ ...instance, state: 'deprovisioning', lastOperationId: operation.id, updatedAt: now() }),
      );
      log.info({ instanceId, operation: operation.id, ...meta }, 'deprovisioning');
      runner.launch(operation, (signal) => this.runDeprovision(operation, signal));
      return { async: true, operation: operation.id };
    });
  }

  async runDeprovision(operation: OperationRecord, signal: AbortSignal): Promise<void> {
    const { store, runtime, runner, log } = this.parts;
    // The provision this cancelled may run in another process: it stops at its next heartbeat.
    if (operation.supersedes) await runner.waitForEnd(operation.supersedes);
    const instance = await store.getInstance(operation.instanceId);
    if (!instance) return runner.finish(operation, 'succeeded', 'The service instance is deleted.');
    try {
      await runner.progress(operation, 'Removing the container, its volume and its bindings.');
      await runtime.destroy(instance);
      await store.deleteBindingsOf(instance.id);
      await store.releasePortsOf(instance.id);
      await runner.finishInstance(
        operation,
        (current) => ({ ...current, state: 'deleted', hostPort: undefined, extraHostPorts: undefined }),
        'succeeded',
        'The service instance is deleted.',
      );
    } catch (error) {
      if (mustHandBack(error, signal)) throw error;
      const reason = reasonOf(error);
      log.error({ instanceId: instance.id, operation: operation.id, reason }, 'deprovision failed');
      await runner.finishInstance(operation, (current) => ({ ...current, state: 'failed' }), 'failed', `Deprovisioning failed: ${reason}`, {
        instanceUsable: false,
      });
    }
  }

  async lastOperation(instanceId: string, query: ResourceQuery): Promise<LastOperation> {
    const { offerings, store } = this.parts;
    checkId(instanceId, 'instance_id');
    offerings.checkOptionalIds(query);
    return toLastOperation(await operationFor(store, instanceId, undefined, query.operation, `Service instance ${instanceId} does not exist.`));
  }
}

/** The broker's provision-only parameters naming where a new instance's data comes from; no offering schema knows them. */
const SOURCE_PARAMETERS = ['restore_from', 'clone_of'] as const;

const withoutSource = (parameters: Record<string, unknown>) =>
  Object.fromEntries(Object.entries(parameters).filter(([name]) => !(SOURCE_PARAMETERS as readonly string[]).includes(name)));

/** The platform's name of the instance (Cloud Foundry's instance_name, the CLI's name), for its engine names. */
function contextName(context: Record<string, unknown> | undefined): string | undefined {
  const name = context?.instance_name;
  return typeof name === 'string' && name ? name : undefined;
}
