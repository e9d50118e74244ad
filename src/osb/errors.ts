/**
 * Errors are values: each carries the HTTP status and, where the spec names one, the OSB error key.
 * The HTTP adapter is the only place that turns them into responses.
 */
export class BrokerError extends Error {
  constructor(
    readonly status: number,
    readonly key: string | undefined,
    readonly description: string,
    readonly extra: { instance_usable?: boolean; update_repeatable?: boolean } = {},
  ) {
    super(description);
    this.name = 'BrokerError';
  }

  /** Bodies of 410 Gone are `{}` by the spec; everything else is `{error, description}`. */
  body(): Record<string, unknown> {
    if (this.status === 410) return {};
    return { ...(this.key ? { error: this.key } : {}), description: this.description, ...this.extra };
  }
}

export const badRequest = (description: string) => new BrokerError(400, 'BadRequest', description);
export const unauthorized = () => new BrokerError(401, 'Unauthorized', 'Missing or invalid broker credentials.');
export const notFound = (description: string) => new BrokerError(404, 'NotFound', description);
export const gone = (description: string) => new BrokerError(410, undefined, description);
export const conflict = (description: string) => new BrokerError(409, 'Conflict', description);
export const preconditionFailed = (description: string) => new BrokerError(412, 'PreconditionFailed', description);
export const payloadTooLarge = (limit: number) => new BrokerError(413, 'PayloadTooLarge', `Request body exceeds the limit of ${limit} bytes.`);

export const asyncRequired = () =>
  new BrokerError(422, 'AsyncRequired', 'This request requires client support for asynchronous operations: add accepts_incomplete=true.');
export const concurrencyError = (description = 'Another operation is in progress for this service instance.') =>
  new BrokerError(422, 'ConcurrencyError', description);
export const maintenanceInfoConflict = (expected: string | undefined) =>
  new BrokerError(
    422,
    'MaintenanceInfoConflict',
    expected
      ? `The maintenance_info.version does not match the catalog (current version is ${expected}); fetch the catalog again.`
      : 'This plan has no maintenance_info; fetch the catalog again.',
  );
/** 422 for a change the broker cannot make (not one of the four spec keys). */
export const unprocessable = (key: string, description: string, extra: BrokerError['extra'] = {}) => new BrokerError(422, key, description, extra);
export const unavailable = (description: string) => new BrokerError(503, 'ServiceUnavailable', description);
