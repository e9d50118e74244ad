/** A named lock stayed busy for longer than the caller would wait. */
export class LockTimeoutError extends Error {}
