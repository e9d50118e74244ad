import type { BrokerClient, LastOperation } from './client.js';
import type { Io } from './run.js';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * Follows an operation to its end, printing each step as the broker describes it with the seconds since it began
 * ("  2.4 s  Starting PostgreSQL."); on a terminal a spinner with the running time turns between steps.
 */
export async function followOperation(client: BrokerClient, io: Io, lastOperationPath: string, timeoutSeconds?: number): Promise<LastOperation> {
  let frame = 0;
  const tick = io.progressInPlace ? (seconds: number) => io.progress(`${FRAMES[frame++ % FRAMES.length]} ${seconds.toFixed(1)} s`) : undefined;
  try {
    return await client.waitFor(
      lastOperationPath,
      (description, seconds) => {
        if (tick) io.progress('');
        io.err(`  ${seconds.toFixed(1).padStart(5)} s  ${description}`);
      },
      timeoutSeconds,
      tick,
    );
  } finally {
    if (tick) io.progress('');
  }
}

/** The operation query of a 202's body, for its last_operation path. */
export const operationQuery = (body: { operation?: unknown }) => (typeof body.operation === 'string' ? `?operation=${encodeURIComponent(body.operation)}` : '');
