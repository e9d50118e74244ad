import type { Context } from 'koa';
import type { DashboardTokens } from '../dashboard/tokens.js';

/**
 * The dashboard's actions with effects (restart) are guarded three ways against cross-site requests: the Origin
 * header must be the page's own (sameOrigin in dashboard-routes.ts), the browser must send a second copy of the
 * session in a SameSite=Strict cookie (never sent with a request another site starts), and the request must carry
 * the page's CSRF token, a keyed digest of that session (given to the page only, in a meta tag).
 */
const ACTION_COOKIE = 'osb_dashboard_action';

/** Called when the page is served: the Strict copy of the session, and the CSRF token for the page. */
export function armActions(ctx: Context, tokens: DashboardTokens, session: string, cookie: { path: string; secure: boolean; maxAgeSeconds: number }): string {
  ctx.cookies.set(ACTION_COOKIE, session, {
    path: cookie.path,
    httpOnly: true,
    sameSite: 'strict',
    secure: cookie.secure,
    maxAge: cookie.maxAgeSeconds * 1000,
    overwrite: true,
  });
  return tokens.csrf(session);
}

/** Whether an action request (already same-origin, with a valid session) carries the Strict cookie and the CSRF token. */
export function actionAllowed(ctx: Context, tokens: DashboardTokens, session: string | undefined): boolean {
  return Boolean(session) && ctx.cookies.get(ACTION_COOKIE) === session && tokens.checkCsrf(session!, ctx.get('X-CSRF-Token') || undefined);
}
