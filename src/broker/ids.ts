import { createHash } from 'node:crypto';
import { customAlphabet } from 'nanoid';
import { badRequest } from '../osb/errors.js';

const ALPHANUMERIC = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const LOWER = '0123456789abcdefghijklmnopqrstuvwxyz';

/** 32 characters of 62: about 190 bits, and safe in every engine's config syntax. */
export const newPassword = customAlphabet(ALPHANUMERIC, 32);
/** Engine user names: a letter first, lowercase (PostgreSQL and friends fold case). */
export const newUsername = () => `u${customAlphabet(LOWER, 15)()}`;
export const newOperationId = customAlphabet(LOWER, 16);

/** Ids are the platform's: any characters but control characters, up to 255 of them. */
const MAX_ID_LENGTH = 255;
/** Control characters, and halves of surrogate pairs (not text at all). */
const CONTROL = /[\p{Cc}\p{Cs}]/u;

export function checkId(value: string | undefined, what: string): string {
  if (!value) throw badRequest(`${what} is missing.`);
  if ([...value].length > MAX_ID_LENGTH) throw badRequest(`${what} is longer than ${MAX_ID_LENGTH} characters.`);
  if (CONTROL.test(value)) throw badRequest(`${what} must not contain control characters.`);
  // A path segment "." or ".." is removed by every URL parser, so such an id could never be addressed again.
  if (value === '.' || value === '..') throw badRequest(`${what} must not be "." or "..".`);
  return value;
}

/** Ids that are used as they are in engine names: Docker's name rules, short, and never shaped like a hashed name. */
const READABLE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;
const HASHED_TAIL = /_[0-9a-f]{32}$/;

/** Swarm takes service names of up to 63 characters (they are DNS labels); containers on one engine use the same rule. */
const MAX_ENGINE_NAME = 63;

/**
 * The engine names of an instance's container and volume. With a name the platform gave it (the context's
 * instance_name): `osb-<broker>-<name>_<32 hex digits of a hash of the id>`, the name lowercased, cut to what fits
 * and reduced to letters, digits and hyphens. Otherwise `osb-<broker>-<id>` when the id is a short Docker-safe name,
 * else a readable prefix of it and the same hash. Two ids never give the same name (a readable id never ends in a
 * hash), and the names are recorded with the instance, so this rule may change: existing containers keep theirs.
 */
export function instanceResourceNames(brokerId: string, instanceId: string, instanceName?: string): { containerName: string; volumeName: string } {
  const prefix = `osb-${brokerId}-`;
  const named = instanceName && readableName(instanceName, MAX_ENGINE_NAME - prefix.length - 33);
  const containerName = named
    ? `${prefix}${named}_${idHash(instanceId)}`
    : `${prefix}${READABLE.test(instanceId) && !HASHED_TAIL.test(instanceId) ? instanceId : hashedName(instanceId)}`;
  return { containerName, volumeName: `${containerName}-data` };
}

/** A platform's instance name as part of an engine name: lowercase letters, digits and single hyphens; "" if none. */
function readableName(name: string, room: number): string {
  if (room < 1) return '';
  return name
    .normalize('NFKD')
    .replace(/\p{M}/gu, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .slice(0, room)
    .replace(/^-+|-+$/g, '');
}

const idHash = (id: string) => createHash('sha256').update(id).digest('hex').slice(0, 32);

function hashedName(id: string): string {
  const prefix = id
    .normalize('NFKD')
    .replace(/[^A-Za-z0-9_.-]+/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 40)
    .replace(/[^A-Za-z0-9]+$/, '');
  return `${prefix}_${idHash(id)}`;
}
