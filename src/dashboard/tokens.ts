import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';

export type TokenCheck = { ok: true } | { ok: false; reason: 'invalid' | 'expired' | 'other-instance' };

/**
 * Signed, expiring capabilities for one instance's dashboard: HMAC-SHA256 over `<purpose>.<instance>.<expiry>`
 * with a key derived from the broker's secret. "link" tokens travel in dashboard_url; "session" tokens live in
 * an HttpOnly cookie after the first visit. One instance's token never opens another.
 */
export class DashboardTokens {
  private readonly key: Buffer;

  constructor(
    secret: Buffer,
    private readonly now: () => number = Date.now,
  ) {
    this.key = Buffer.from(hkdfSync('sha256', secret, 'osb-docker-broker', 'dashboard tokens', 32));
  }

  mint(purpose: 'link' | 'session', instanceId: string, ttlSeconds: number): string {
    const expiry = Math.floor(this.now() / 1000) + ttlSeconds;
    const body = Buffer.from(JSON.stringify({ p: purpose, i: instanceId, e: expiry })).toString('base64url');
    return `${body}.${this.sign(body)}`;
  }

  check(token: string | undefined, purpose: 'link' | 'session', instanceId: string): TokenCheck {
    const [body, signature, extra] = (token ?? '').split('.');
    if (!body || !signature || extra !== undefined) return { ok: false, reason: 'invalid' };
    const expected = Buffer.from(this.sign(body));
    const given = Buffer.from(signature);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'invalid' };
    let claims: { p?: string; i?: string; e?: number };
    try {
      claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as typeof claims;
    } catch {
      return { ok: false, reason: 'invalid' };
    }
    if (claims.p !== purpose) return { ok: false, reason: 'invalid' };
    if (claims.i !== instanceId) return { ok: false, reason: 'other-instance' };
    if (typeof claims.e !== 'number' || claims.e * 1000 <= this.now()) return { ok: false, reason: 'expired' };
    return { ok: true };
  }

  private sign(body: string): string {
    return createHmac('sha256', this.key).update(body).digest('base64url');
  }
}
