import { randomBytes } from 'node:crypto';
import { notFound } from '../osb/errors.js';
import type { InstanceRecord } from '../store/records.js';
import type { StateStore } from './contracts.js';
import { locked } from './lifecycle-parts.js';
import { now } from './operations.js';

/** What an instance's dashboard address is made from: its id, its platform (context) and its link secret. */
export type LinkedInstance = Pick<InstanceRecord, 'id' | 'serviceId' | 'context' | 'secrets'>;

/** 32 random bytes, base64url: the secret a lifelong dashboard link carries. */
export const newDashboardLinkSecret = (): string => randomBytes(32).toString('base64url');

/** The secrets with a link secret: an instance made before lifelong links gets one at its next update. */
export const withDashboardLink = (secrets: InstanceRecord['secrets']): InstanceRecord['secrets'] =>
  secrets.dashboardLink ? secrets : { ...secrets, dashboardLink: newDashboardLinkSecret() };

/**
 * A new link secret for a live instance: the old link, and every dashboard session opened with it, stop working at
 * once. Under the instance lock, like every other write of its record, so no operation writes the old one back.
 */
export function rotateDashboardLink(store: StateStore, instanceId: string): Promise<InstanceRecord> {
  return locked(store, instanceId, async () => {
    const instance = await store.getInstance(instanceId);
    if (!instance || instance.state === 'deleted' || instance.state === 'deprovisioning') {
      throw notFound(`Service instance ${instanceId} does not exist.`);
    }
    const rotated: InstanceRecord = { ...instance, secrets: { ...instance.secrets, dashboardLink: newDashboardLinkSecret() }, updatedAt: now() };
    await store.putInstance(rotated);
    return rotated;
  });
}
