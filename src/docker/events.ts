import type { ContainerEvent } from './types.js';

/** One line of the engine's event stream; undefined for anything that is not a container event. */
export function parseContainerEvent(line: string): { event: ContainerEvent; seconds: number } | undefined {
  if (!line.trim()) return undefined;
  try {
    const raw = JSON.parse(line) as {
      Type?: string;
      Action?: string;
      id?: string;
      time?: number;
      timeNano?: number;
      Actor?: { ID?: string; Attributes?: Record<string, string> };
    };
    if (raw.Type !== 'container' || !raw.Action) return undefined;
    const seconds = raw.time ?? Math.floor(Date.now() / 1000);
    const millis = raw.timeNano ? Math.floor(raw.timeNano / 1e6) : seconds * 1000;
    return {
      event: { action: raw.Action, containerId: raw.Actor?.ID ?? raw.id ?? '', attributes: raw.Actor?.Attributes ?? {}, time: new Date(millis).toISOString() },
      seconds,
    };
  } catch {
    return undefined;
  }
}
