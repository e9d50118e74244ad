/**
 * A pass a process runs every so often (certificate renewal, usage sampling, engine stats, the pass over deleted
 * instances' backups): never two at once in one process, a failure logged by the owner and tried again at the next
 * tick, and `stop()` waits for the pass that runs. Which replica does the work is the pass's own business (a lease).
 */
export class PeriodicPass {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private stopped = false;

  constructor(
    private readonly pass: () => Promise<unknown>,
    private readonly failed: (error: unknown) => void,
  ) {}

  /** Runs the pass every `intervalMs` (none for 0 or less), and at once when `now` is set. */
  start(intervalMs: number, { now = false } = {}): void {
    if (intervalMs <= 0 || this.timer) return;
    this.stopped = false;
    this.timer = setInterval(() => this.run(), intervalMs);
    // The broker's listeners keep the process alive; a pass timer alone must not.
    this.timer.unref();
    if (now) this.run();
  }

  /** Starts a pass unless one is running or the pass is stopped. */
  run(): void {
    if (this.running || this.stopped) return;
    this.running = this.pass()
      .then(() => undefined)
      .catch(this.failed)
      .finally(() => (this.running = undefined));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
