import type { ServiceDefinition } from '../catalog/definition.js';
import { validateParameters } from '../catalog/parameters.js';
import { badRequest, concurrencyError } from '../osb/errors.js';
import type { BindRequest, Plan } from '../osb/types.js';
import type { BindingRecord } from '../store/records.js';
import { optionalObject } from './request-fields.js';
import { sameJson } from './same.js';

/**
 * Binding rotation (OSB 2.17): a bind request with `predecessor_binding_id` asks for a successor of a binding of the
 * same instance. The successor gets credentials of its own (a new user); the predecessor keeps working until it is
 * unbound. The spec's rotation request carries the predecessor's id alone, because platforms need not keep binding
 * parameters: the successor takes the predecessor's app, bind_resource and parameters. Every refusal is a 400 (the
 * request's data is invalid, which is what the spec has 400 for), but a predecessor still being created, which is
 * the spec's 422 ConcurrencyError: the same request succeeds once that binding is ready.
 */

/** What a binding is made with; the same for a predecessor and its successor. */
export interface BindingTerms {
  appGuid?: string;
  bindResource?: Record<string, unknown>;
  parameters: Record<string, unknown>;
}

/** The request's predecessor_binding_id: undefined for an ordinary bind; anything but a non-empty string is a 400. */
export function predecessorIdOf(request: BindRequest): string | undefined {
  const value = request.predecessor_binding_id;
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || value === '')
    throw badRequest('predecessor_binding_id must be a non-empty string: the id of a binding of this service instance.');
  return value;
}

/** Whether the catalog lets a plan's bindings be rotated (the spec's default is false). */
export const planRotates = (plan: Plan) => plan.binding_rotatable === true;

/** A plan whose catalog entry does not say `binding_rotatable: true` is never rotated (the platform MUST NOT ask). */
export function checkPlanRotates(definition: ServiceDefinition, plan: Plan): void {
  if (!planRotates(plan)) {
    throw badRequest(
      `Plan ${plan.name} of ${definition.offering.name} does not support binding rotation (binding_rotatable is not true in the catalog); bind without predecessor_binding_id.`,
    );
  }
}

/** The app a bind request names: bind_resource.app_guid, else the deprecated top-level app_guid. */
export function appGuidOf(request: BindRequest, bindResource: Record<string, unknown> | undefined): string | undefined {
  return (typeof bindResource?.app_guid === 'string' ? bindResource.app_guid : undefined) ?? request.app_guid;
}

/**
 * The terms a successor takes: its predecessor's, which must be a ready binding of the same instance. A predecessor
 * still being created is a ConcurrencyError; a missing, deleted or failed one, or one being deleted, is a 400.
 */
export function predecessorTerms(instanceId: string, predecessorId: string, predecessor: BindingRecord | undefined): BindingTerms {
  if (!predecessor || predecessor.state === 'deleted' || predecessor.instanceId !== instanceId) {
    throw badRequest(`predecessor_binding_id ${predecessorId} is not a binding of service instance ${instanceId}.`);
  }
  if (predecessor.state === 'creating') throw concurrencyError(`The predecessor binding ${predecessorId} is still being created; rotate it once it is ready.`);
  if (predecessor.state !== 'ready') {
    const why = predecessor.state === 'deleting' ? 'being deleted' : 'failed';
    throw badRequest(`The predecessor binding ${predecessorId} is ${why}; only a ready binding can be rotated.`);
  }
  return {
    ...(predecessor.appGuid === undefined ? {} : { appGuid: predecessor.appGuid }),
    ...(predecessor.bindResource === undefined ? {} : { bindResource: predecessor.bindResource }),
    parameters: predecessor.parameters,
  };
}

/**
 * Which of the given terms a rotation request sends other values for. It may repeat them or leave them out, not
 * change them: a binding with other terms is an ordinary bind. An empty bind_resource counts as absent.
 */
export function changedTerms(definition: ServiceDefinition, request: BindRequest, terms: BindingTerms): string[] {
  const bindResource = optionalObject(request.bind_resource, 'bind_resource');
  const appGuid = appGuidOf(request, bindResource);
  const changed: string[] = [];
  if (appGuid !== undefined && appGuid !== terms.appGuid) changed.push('app_guid');
  if (bindResource !== undefined && Object.keys(bindResource).length > 0 && !sameJson(bindResource, terms.bindResource ?? {})) changed.push('bind_resource');
  if (request.parameters !== undefined) {
    const parameters = validateParameters(definition.bindingParameterSchema, request.parameters, 'binding parameters');
    if (!sameJson(parameters, terms.parameters)) changed.push('parameters');
  }
  return changed;
}

/** The 400 for a rotation request that changes the predecessor's terms. */
export function checkUnchanged(definition: ServiceDefinition, request: BindRequest, terms: BindingTerms): void {
  const changed = changedTerms(definition, request, terms);
  if (changed.length > 0) {
    throw badRequest(
      `A rotation keeps the predecessor binding's ${changed.join(', ')}; send predecessor_binding_id alone (or the same values), or bind without it to use others.`,
    );
  }
}
