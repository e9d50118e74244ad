import Docker from 'dockerode';
import pg from 'pg';

const docker = new Docker();
const openStreams = new Set<{ destroy(): void }>();

/** Closes every event stream still open, so a test file that failed half-way can still exit. */
export function stopAllWatchers(): void {
  for (const stream of openStreams) stream.destroy();
  openStreams.clear();
}

/**
 * Records every container the engine creates with all of `labels`, from now until `stop()`: tells "exactly one
 * container ever existed" apart from "one container is left at the end". Docker events are exact, polling is not.
 */
export async function watchContainerCreations(labels: Record<string, string>): Promise<{ stop(): Promise<string[]> }> {
  const created: string[] = [];
  const stream = (await docker.getEvents({
    filters: { type: ['container'], event: ['create'], label: Object.entries(labels).map(([key, value]) => `${key}=${value}`) },
  })) as NodeJS.ReadableStream & { destroy(): void };
  openStreams.add(stream);
  let pending = '';
  stream.on('data', (chunk: Buffer) => {
    pending += chunk.toString('utf8');
    const parts = pending.split('\n');
    pending = parts.pop()!;
    for (const part of parts) {
      if (!part.trim()) continue;
      const event = JSON.parse(part) as { id?: string; Actor?: { ID?: string } };
      created.push(event.Actor?.ID ?? event.id ?? '?');
    }
  });
  stream.on('error', () => {});
  return {
    async stop() {
      // Events reach us a moment after the engine acts.
      await new Promise((resolve) => setTimeout(resolve, 300));
      stream.destroy();
      openStreams.delete(stream);
      return created;
    },
  };
}

/** The engine's own view of a container (published addresses, mounts, env), for the checks the adapter does not expose. */
export function inspectRaw(name: string) {
  return docker.getContainer(name).inspect();
}

export function inspectVolume(name: string) {
  return docker.getVolume(name).inspect();
}

/** One query over a fresh connection. */
export async function pgQuery(uri: string, sql: string, values: unknown[] = []) {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await client.query(sql, values);
  } finally {
    await client.end();
  }
}
