import type { StatUnit } from '../catalog/definition.js';
import { renderLink } from '../catalog/stats.js';
import type { EngineStats } from '../broker/engine-stats.js';
import type { InstanceRecord } from '../store/records.js';
import type { DashboardInstance } from './service.js';

/** The dashboard's Engine card: the engine's own numbers, why there are none, and links such as its web UI. */
export interface EngineCard {
  /** False when the offering declares no stats (the card then says only that, with its links). */
  supported: boolean;
  /** When the numbers were read. */
  at?: string;
  /** Why there are no numbers: the offering has none, the container is stopped, the script failed or overran. */
  reason?: string;
  stats: Array<{ name: string; label: string; unit: StatUnit; of?: string; value: number | null }>;
  /** URLs only, never credentials: the user logs in with a binding's. */
  links: Array<{ label: string; url: string; note?: string }>;
}

export interface EngineCardParts {
  stats: EngineStats;
  store: {
    getInstance(id: string): Promise<InstanceRecord | undefined>;
    getInstanceTls(id: string): Promise<unknown>;
  };
  advertisedHost: string;
}

export class DashboardEngine {
  constructor(private readonly parts: EngineCardParts) {}

  async card(instance: DashboardInstance): Promise<EngineCard> {
    const { stats, store } = this.parts;
    // The script's environment holds the admin password: the record with its secrets is read here and goes no further.
    const [record, tls] = await Promise.all([store.getInstance(instance.id), store.getInstanceTls(instance.id).catch(() => undefined)]);
    const definition = stats.declared(instance);
    const links = this.links(instance, tls !== undefined);
    if (!definition || !record) return { supported: false, reason: 'This offering reports no engine numbers.', stats: [], links };
    const reading = await stats.read(record);
    return {
      supported: true,
      at: reading.at,
      ...(reading.error ? { reason: reading.error } : {}),
      stats: definition.stats!.map(({ name, label, unit, of }) => ({ name, label, unit, ...(of ? { of } : {}), value: reading.values?.[name] ?? null })),
      links,
    };
  }

  private links(instance: DashboardInstance, servesTls: boolean): EngineCard['links'] {
    const declared = this.parts.stats.definitionOf(instance)?.dashboardLinks ?? [];
    const host = instance.advertisedHost ?? this.parts.advertisedHost;
    return declared.flatMap((link) => {
      if (link.tls && !servesTls) return [];
      const url = renderLink(link.url, host, instance.hostPort, instance.extraHostPorts ?? {});
      return url ? [{ label: link.label, url, ...(link.note ? { note: link.note } : {}) }] : [];
    });
  }
}
