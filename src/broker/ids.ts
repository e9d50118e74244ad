import { customAlphabet } from 'nanoid';
import { badRequest } from '../osb/errors.js';

const ALPHANUMERIC = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const LOWER = '0123456789abcdefghijklmnopqrstuvwxyz';

/** 32 characters of 62: about 190 bits, and safe in every engine's config syntax. */
export const newPassword = customAlphabet(ALPHANUMERIC, 32);
/** Engine user names: a letter first, lowercase (PostgreSQL and friends fold case). */
export const newUsername = () => `u${customAlphabet(LOWER, 15)()}`;
export const newOperationId = customAlphabet(LOWER, 16);

/** Ids become container and volume names, so they are held to Docker's name rules and a sane length. */
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;

export function checkId(value: string | undefined, what: string): string {
  if (!value) throw badRequest(`${what} is missing.`);
  if (!ID.test(value) || value.includes('..')) {
    throw badRequest(`${what} must be 1-100 characters of letters, digits, ".", "_" and "-", starting with a letter or digit.`);
  }
  return value;
}

/** The engine names of an instance's container and volume; recorded with the instance, so this rule may change. */
export function instanceResourceNames(brokerId: string, instanceId: string): { containerName: string; volumeName: string } {
  const containerName = `osb-${brokerId}-${instanceId}`;
  return { containerName, volumeName: `${containerName}-data` };
}
