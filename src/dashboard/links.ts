import { createHash, timingSafeEqual } from 'node:crypto';
import type { LinkedInstance } from '../broker/dashboard-link.js';
import type { InstanceRecord } from '../store/records.js';
import type { DashboardTokens, TokenClaims } from './tokens.js';

export type Denial = 'missing' | 'invalid' | 'expired' | 'other-instance' | 'replaced';
export type AccessCheck = { ok: true; claims: TokenClaims } | { ok: false; reason: Denial };

export interface LinkOptions {
  tokens: DashboardTokens;
  /** Known once the broker listens. */
  publicUrl: () => string;
  /** Lifetime of the expiring links of instances that have no link secret yet (and of the overview's). */
  linkTtlSeconds: number;
  /** Whether the instance's visitors sign in with the platform (dashboard SSO) rather than carry a link. */
  signsIn: (instance: Pick<InstanceRecord, 'serviceId' | 'context'>) => boolean;
}

/**
 * Dashboard addresses and their checks. An instance's link carries its lifelong secret (kept sealed with the
 * instance, replaced by a rotation, gone with the instance); an instance made before such links has none until its
 * next update, and gets the older expiring HMAC token meanwhile. The two never look alike: lifelong secrets have
 * no ".", HMAC tokens have one.
 */
export class DashboardLinks {
  constructor(private readonly options: LinkOptions) {}

  pagePath(instanceId: string): string {
    return `/dashboard/instances/${encodeURIComponent(instanceId)}`;
  }

  /** What the platform keeps as dashboard_url: the plain page where visitors sign in, else a link. */
  platformUrl(instance: LinkedInstance): string {
    return this.options.signsIn(instance) ? `${this.options.publicUrl()}${this.pagePath(instance.id)}` : this.linkUrl(instance);
  }

  /** A link that opens the dashboard by itself: lifelong when the instance has a link secret, else expiring. */
  linkUrl(instance: LinkedInstance): string {
    const token = instance.secrets.dashboardLink ?? this.options.tokens.mint('link', instance.id, this.options.linkTtlSeconds);
    return `${this.options.publicUrl()}${this.pagePath(instance.id)}?token=${token}`;
  }

  /** A link's token against the instance it names (undefined: none, or deleted); a lifelong one names its session's link. */
  checkLink(token: string, instanceId: string, instance: InstanceRecord | undefined): AccessCheck {
    if (token.includes('.')) {
      const check = this.options.tokens.check(token, 'link', instanceId);
      return check.ok ? { ok: true, claims: {} } : check;
    }
    const secret = instance?.state === 'deleted' ? undefined : instance?.secrets.dashboardLink;
    if (!secret || !sameSecret(token, secret)) return { ok: false, reason: 'invalid' };
    return { ok: true, claims: { l: this.options.tokens.tag(secret) } };
  }

  /** A session cookie: signed, unexpired, this instance's, and, if a lifelong link opened it, that link still current. */
  checkSession(cookie: string | undefined, instanceId: string, instance: InstanceRecord | undefined): AccessCheck {
    if (!cookie) return { ok: false, reason: 'missing' };
    const check = this.options.tokens.check(cookie, 'session', instanceId);
    if (!check.ok || check.claims.l === undefined) return check;
    const secret = instance?.state === 'deleted' ? undefined : instance?.secrets.dashboardLink;
    if (!secret) return { ok: false, reason: 'invalid' };
    if (!sameSecret(check.claims.l, this.options.tokens.tag(secret))) return { ok: false, reason: 'replaced' };
    return check;
  }
}

/** Constant time whatever the lengths: both sides are hashed first. */
function sameSecret(given: string, expected: string): boolean {
  const digest = (text: string) => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}
