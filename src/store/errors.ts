/** A named lock stayed busy for longer than the caller would wait. */
export class LockTimeoutError extends Error {}

/**
 * The state store did not answer (down, hung past the command time-out, or unreachable). Requests answer 503 with
 * Retry-After; operations stop where they are and are continued once it answers again: never a reason to undo work.
 */
export class StoreUnavailableError extends Error {}
