/** The outside parts the broker cannot work without. */
export type Dependency = 'redis' | 'docker';

/** "ok", or why the dependency did not answer (never a secret: the probes strip credentials). */
export type CheckResults = Record<Dependency, string>;

export interface Readiness {
  ready: boolean;
  checks: CheckResults;
}

/** How long one check may take before its dependency counts as not answering. */
export const CHECK_TIMEOUT_MS = 1000;

/** The probe's answer, or a rejection once `ms` have passed without one (the probe is left to settle on its own). */
export async function within<T>(probe: () => Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  const answer = Promise.resolve().then(probe);
  // A probe that settles after the time-out must not surface as an unhandled rejection.
  answer.catch(() => {});
  try {
    return await Promise.race([answer, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Whether Redis and the Docker engine answer, each asked in parallel and given `timeoutMs`. Shared by /readyz and
 * the osb_redis_up / osb_docker_up gauges.
 */
export class DependencyChecks {
  constructor(
    private readonly probes: Record<Dependency, () => Promise<unknown>>,
    readonly timeoutMs = CHECK_TIMEOUT_MS,
  ) {}

  async run(): Promise<Readiness> {
    const names = Object.keys(this.probes) as Dependency[];
    const outcomes = await Promise.allSettled(names.map((name) => within(this.probes[name], this.timeoutMs)));
    const checks = Object.fromEntries(
      names.map((name, index) => {
        const outcome = outcomes[index]!;
        return [name, outcome.status === 'fulfilled' ? 'ok' : reasonOf(outcome.reason)];
      }),
    ) as CheckResults;
    return { ready: Object.values(checks).every((result) => result === 'ok'), checks };
  }
}

/** The error's message, with any user:password@ of an address taken out. */
const reasonOf = (error: unknown) => ((error instanceof Error ? error.message : String(error)) || 'failed').replace(/\/\/[^@/\s]*@/g, '//');
