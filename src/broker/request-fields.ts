import { badRequest } from '../osb/errors.js';

/** Field checks of request bodies that a wrong client gets a 400 for. */

export function requireString(value: unknown, name: string): string {
  if (typeof value !== 'string' || value === '') throw badRequest(`${name} is missing or empty.`);
  return value;
}

export function optionalObject(value: unknown, name: string): Record<string, unknown> | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw badRequest(`${name} must be a JSON object.`);
  return value as Record<string, unknown>;
}

/** `maintenance_info` without a version (or `{}`) counts as absent. */
export function maintenanceVersion(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw badRequest('maintenance_info must be a JSON object.');
  const version = (value as { version?: unknown }).version;
  if (version === undefined || version === '') return undefined;
  if (typeof version !== 'string') throw badRequest('maintenance_info.version must be a string.');
  return version;
}
