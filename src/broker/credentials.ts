import type { CredentialTemplate, CredentialsTemplate, ServiceDefinition } from '../catalog/definition.js';
import type { CredentialValue, Credentials } from '../osb/types.js';

export type TemplateValues = Record<string, unknown>;

const PLACEHOLDER = /\{([a-z_][\w.]*)(\|uri)?\}/gi;

function lookup(values: TemplateValues, path: string): unknown {
  return path.split('.').reduce<unknown>((node, part) => (node && typeof node === 'object' ? (node as Record<string, unknown>)[part] : undefined), values);
}

/**
 * Fills a credentials template such as `postgres://{binding.username|uri}@{host}:{port}`.
 * `|uri` percent-encodes the value; a string that is a single placeholder keeps the value's type (numeric ports).
 * Fields whose placeholders have no value are left out rather than sent empty; so are lists and objects left empty.
 */
export function renderCredentials(template: CredentialsTemplate, values: TemplateValues): Credentials {
  const credentials: Credentials = {};
  for (const [key, pattern] of Object.entries(template)) {
    const value = renderField(pattern, values);
    if (value !== undefined) credentials[key] = value;
  }
  return credentials;
}

function renderField(pattern: CredentialTemplate, values: TemplateValues): CredentialValue | undefined {
  if (typeof pattern === 'string') return renderValue(pattern, values);
  if (Array.isArray(pattern)) {
    const items = pattern.map((item) => renderValue(item, values)).filter((item) => item !== undefined);
    return items.length > 0 ? items : undefined;
  }
  const object = renderCredentials(pattern, values);
  return Object.keys(object).length > 0 ? object : undefined;
}

/**
 * The template of an instance's credentials: the offering's, plus `tls.credentials` when the broker delivers TLS
 * (`withTls`), with the fields of `tls.credentials_require_tls` in place of their namesakes when the instance's
 * require_tls parameter is true (a uri asking for verified TLS).
 */
export function credentialsTemplate(
  definition: Pick<ServiceDefinition, 'credentials' | 'tls'>,
  parameters: Record<string, unknown>,
  withTls: boolean,
): CredentialsTemplate {
  if (!definition.tls || !withTls) return definition.credentials;
  return {
    ...definition.credentials,
    ...definition.tls.credentials,
    ...(parameters.require_tls === true ? definition.tls.requireTlsCredentials : {}),
  };
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

/** What templates of a TLS offering read as `{tls.ca}` (the CA certificate, PEM) and `{tls.port}` (the host port serving TLS). */
export function tlsValues(
  definition: Pick<ServiceDefinition, 'tls'>,
  instance: { hostPort?: number; extraHostPorts?: Record<string, number> },
  tls: { caCertificate(): string } | undefined,
): { tls?: { ca: string; port?: number } } {
  // Without the broker's TLS (a runtime that cannot deliver the files), the fields that name it are left out.
  if (!definition.tls || !tls) return {};
  const port = definition.tls.port === 'main' ? instance.hostPort : instance.extraHostPorts?.[definition.tls.port];
  return { tls: { ca: tls.caCertificate(), port } };
}
