import { Ajv, type ValidateFunction } from 'ajv';
import { badRequest } from '../osb/errors.js';

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const compiled = new WeakMap<object, ValidateFunction>();

export function compileSchema(schema: Record<string, unknown>): ValidateFunction {
  let validate = compiled.get(schema);
  if (!validate) {
    validate = ajv.compile(schema);
    compiled.set(schema, validate);
  }
  return validate;
}

/** Validates parameters against a plan's schema; returns a copy with the schema's defaults filled in. */
export function validateParameters(schema: Record<string, unknown>, parameters: unknown, what: string): Record<string, unknown> {
  if (parameters !== undefined && (typeof parameters !== 'object' || parameters === null || Array.isArray(parameters))) {
    throw badRequest(`${what} must be a JSON object.`);
  }
  const copy = structuredClone((parameters ?? {}) as Record<string, unknown>);
  const validate = compileSchema(schema);
  if (!validate(copy)) {
    const problems = (validate.errors ?? []).map((error) => {
      const where = error.instancePath ? error.instancePath.slice(1).replaceAll('/', '.') : '';
      if (error.keyword === 'additionalProperties') {
        return `unknown parameter "${(error.params as { additionalProperty: string }).additionalProperty}"`;
      }
      return `${where || 'parameters'} ${error.message ?? 'is invalid'}`;
    });
    throw badRequest(`Invalid ${what}: ${problems.join('; ')}.`);
  }
  return copy;
}
