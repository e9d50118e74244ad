import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';

export type TokenCheck = { ok: true; claims: TokenClaims } | { ok: false; reason: 'invalid' | 'expired' | 'other-instance' };
/** What a session says besides its instance and expiry: the lifelong link it came from (`l`, a tag, never the link itself), or a sign-in (`s`). */
export type TokenClaims = { l?: string; s?: string };

/**
 * Signed, expiring capabilities for one instance's dashboard: HMAC-SHA256 over `<purpose>.<instance>.<expiry>`
 * with a key derived from the broker's secret. Expiring "link" tokens are the overview's links (and the
 * dashboard_url of instances made before lifelong links, see links.ts); "session" tokens live in an HttpOnly
 * cookie after the first visit. One instance's token never opens another.
 */
export class DashboardTokens {
  private readonly key: Buffer;

  constructor(
    secret: Buffer,
    private readonly now: () => number = Date.now,
  ) {
    this.key = Buffer.from(hkdfSync('sha256', secret, 'osb-docker-broker', 'dashboard tokens', 32));
  }

  mint(purpose: 'link' | 'session', instanceId: string, ttlSeconds: number, claims: TokenClaims = {}): string {
    const expiry = Math.floor(this.now() / 1000) + ttlSeconds;
    const body = Buffer.from(JSON.stringify({ p: purpose, i: instanceId, e: expiry, ...claims })).toString('base64url');
    return `${body}.${this.sign(body)}`;
  }

  check(token: string | undefined, purpose: 'link' | 'session', instanceId: string): TokenCheck {
    const [body, signature, extra] = (token ?? '').split('.');
    if (!body || !signature || extra !== undefined) return { ok: false, reason: 'invalid' };
    const expected = Buffer.from(this.sign(body));
    const given = Buffer.from(signature);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'invalid' };
    let claims: { p?: string; i?: string; e?: number } & TokenClaims;
    try {
      claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as typeof claims;
    } catch {
      return { ok: false, reason: 'invalid' };
    }
    if (claims.p !== purpose) return { ok: false, reason: 'invalid' };
    if (claims.i !== instanceId) return { ok: false, reason: 'other-instance' };
    if (typeof claims.e !== 'number' || claims.e * 1000 <= this.now()) return { ok: false, reason: 'expired' };
    return { ok: true, claims: { l: claims.l, s: claims.s } };
  }

  /** A short keyed digest of a lifelong link's secret: a session names its link by it without carrying the link. */
  tag(linkSecret: string): string {
    return createHmac('sha256', this.key).update(`link-tag.${linkSecret}`).digest('base64url').slice(0, 22);
  }

  /** The page's anti-CSRF token, bound to its session: a keyed digest of the session cookie's value. */
  csrf(session: string): string {
    return createHmac('sha256', this.key).update(`csrf.${session}`).digest('base64url');
  }

  /** Whether `given` is the CSRF token of `session` (constant time). */
  checkCsrf(session: string, given: string | undefined): boolean {
    const expected = Buffer.from(this.csrf(session));
    const actual = Buffer.from(given ?? '');
    return actual.length === expected.length && timingSafeEqual(actual, expected);
  }

  private sign(body: string): string {
    return createHmac('sha256', this.key).update(body).digest('base64url');
  }
}
