import type { CredentialsTemplate } from '../catalog/definition.js';
import type { Credentials } from '../osb/types.js';

export type TemplateValues = Record<string, unknown>;

const PLACEHOLDER = /\{([a-z_][\w.]*)(\|uri)?\}/gi;

function lookup(values: TemplateValues, path: string): unknown {
  return path.split('.').reduce<unknown>((node, part) => (node && typeof node === 'object' ? (node as Record<string, unknown>)[part] : undefined), values);
}

/**
 * Fills a credentials template such as `postgres://{binding.username|uri}@{host}:{port}`.
 * `|uri` percent-encodes the value; a string that is a single placeholder keeps the value's type (numeric ports).
 * Fields whose placeholders have no value are left out rather than sent empty.
 */
export function renderCredentials(template: CredentialsTemplate, values: TemplateValues): Credentials {
  const credentials: Credentials = {};
  for (const [key, pattern] of Object.entries(template)) {
    if (Array.isArray(pattern)) {
      const items = pattern.map((item) => renderValue(item, values)).filter((item) => item !== undefined);
      if (items.length > 0) credentials[key] = items;
      continue;
    }
    const value = renderValue(pattern, values);
    if (value !== undefined) credentials[key] = value;
  }
  return credentials;
}

/** One template string; undefined when a placeholder has no value. */
export function renderValue(pattern: string, values: TemplateValues): string | number | undefined {
  const whole = /^\{([a-z_][\w.]*)\}$/i.exec(pattern);
  if (whole) {
    const value = lookup(values, whole[1]!);
    return typeof value === 'number' || (typeof value === 'string' && value !== '') ? value : undefined;
  }
  let missing = false;
  const text = pattern.replace(PLACEHOLDER, (_match, path: string, uri?: string) => {
    const value = lookup(values, path);
    if (value === undefined || value === null || value === '') {
      missing = true;
      return '';
    }
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    return uri ? encodeURIComponent(text) : text;
  });
  return missing ? undefined : text;
}
