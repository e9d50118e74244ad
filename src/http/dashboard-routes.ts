import Router from '@koa/router';
import type { Context, Middleware } from 'koa';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { DashboardBackups } from '../dashboard/backups.js';
import type { DashboardEngine } from '../dashboard/engine.js';
import type { DashboardInstance, DashboardService } from '../dashboard/service.js';
import type { DashboardTokens, TokenClaims } from '../dashboard/tokens.js';
import type { DashboardLinks, Denial } from '../dashboard/links.js';
import { DashboardSso } from '../dashboard/sso.js';
import type { InstanceRecord } from '../store/records.js';
import { logLinesHtml, overviewPage, problemPage } from '../dashboard/pages.js';
import type { InstanceRestart } from '../broker/restart.js';
import { actionAllowed, armActions } from './dashboard-actions.js';

export interface DashboardOptions {
  service: DashboardService;
  tokens: DashboardTokens;
  /** The instances' dashboard links and their checks. */
  links: DashboardLinks;
  /** An instance's record with its link secret (undefined: none), read once per request. */
  record: (instanceId: string) => Promise<InstanceRecord | undefined>;
  /** Sign-in with Cloud Foundry's UAA for its instances; without it, links only. */
  sso?: DashboardSso;
  /** Folder with the page and its assets. */
  assetsDir: string;
  linkTtlSeconds: number;
  sessionTtlSeconds: number;
  secureCookies: boolean;
  /** Basic auth of the broker's own credentials, for the overview. */
  brokerAuth: Middleware;
  /** The backups panel; without it the panel says the broker keeps no backups. */
  backups?: DashboardBackups;
  /** The Restart button; without it the page hides it. */
  restarts?: Pick<InstanceRestart, 'request'>;
  /** The Engine card (the offering's stats and links); without it the card says the broker reads none. */
  engine?: DashboardEngine;
}

const COOKIE = 'osb_dashboard';
const ASSETS: Record<string, string> = {
  'app.js': 'text/javascript; charset=utf-8',
  'engine-stats.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};
/** The charts and their library (uPlot), served from its npm package: no CDN, the page's CSP allows 'self' only. */
const CHART_ASSETS: Record<string, { type: string; from: (assetsDir: string) => string }> = {
  'charts.js': { type: 'text/javascript; charset=utf-8', from: (assetsDir) => path.join(assetsDir, 'charts.js') },
  'uplot.min.js': { type: 'text/javascript; charset=utf-8', from: () => createRequire(import.meta.url).resolve('uplot/dist/uPlot.iife.min.js') },
  'uplot.min.css': { type: 'text/css; charset=utf-8', from: () => createRequire(import.meta.url).resolve('uplot/dist/uPlot.min.css') },
};
const MAX_TAIL = 10_000;
/** As many as the tail selector's default. */
const PAGE_LINES = 500;

export function dashboardRoutes(options: DashboardOptions): Router {
  const { service, tokens } = options;
  const router = new Router({ prefix: '/dashboard' });
  const instancePage = readFileSync(path.join(options.assetsDir, 'instance.html'), 'utf8');
  const assets = new Map(Object.keys(ASSETS).map((name) => [name, readFileSync(path.join(options.assetsDir, name))]));

  router.use(async (ctx, next) => {
    ctx.set(
      'Content-Security-Policy',
      "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.set('Referrer-Policy', 'no-referrer');
    ctx.set('Cache-Control', 'no-store');
    await next();
  });

  const chartAssets = new Map(Object.entries(CHART_ASSETS).map(([name, asset]) => [name, readFileSync(asset.from(options.assetsDir))]));

  router.get('/assets/:file', (ctx) => {
    const file = ctx.params.file!;
    const body = assets.get(file) ?? chartAssets.get(file);
    if (!body) return problem(ctx, 404, 'Not found', 'There is no such file.');
    ctx.type = ASSETS[file] ?? CHART_ASSETS[file]!.type;
    ctx.set('Cache-Control', 'public, max-age=300');
    ctx.body = body;
  });

  router.get('/', options.brokerAuth, async (ctx) => {
    const rows = await service.overview();
    ctx.type = 'text/html; charset=utf-8';
    ctx.body = overviewPage(rows, (id) => `/dashboard/instances/${encodeURIComponent(id)}?token=${tokens.mint('link', id, options.linkTtlSeconds)}`);
  });

  /** A session for one instance (an HttpOnly cookie on its path), then on to its page on a clean URL. */
  const startSession = (ctx: Context, id: string, claims: TokenClaims) => {
    const cookiePath = options.links.pagePath(id);
    ctx.cookies.set(COOKIE, tokens.mint('session', id, options.sessionTtlSeconds, claims), {
      path: cookiePath,
      httpOnly: true,
      sameSite: 'lax',
      secure: options.secureCookies,
      maxAge: options.sessionTtlSeconds * 1000,
      overwrite: true,
    });
    // The token has done its job: continue on a clean URL that can be bookmarked or shared without it.
    ctx.status = 303;
    ctx.redirect(cookiePath);
  };

  /** The instance named in the path, once the link (first visit), the cookie (afterwards) or a sign-in allows it. */
  const authorised =
    (handler: (ctx: Context, instance: DashboardInstance) => Promise<void> | void): Middleware =>
    async (ctx) => {
      const id = (ctx.params as Record<string, string>).id ?? '';
      const link = typeof ctx.query.token === 'string' ? ctx.query.token : undefined;
      // The page's API called with no credential at all is refused before the state store is asked: nothing to check,
      // and a store outage does not turn that 401 into a 503.
      if (link === undefined && ctx.cookies.get(COOKIE) === undefined && ctx.path.includes('/api/')) return denied(ctx, 'missing', undefined, options.sso);
      const record = await options.record(id);
      if (link !== undefined) {
        const check = options.links.checkLink(link, id, record);
        if (!check.ok) return denied(ctx, check.reason, record, options.sso);
        return startSession(ctx, id, check.claims);
      }
      const check = options.links.checkSession(ctx.cookies.get(COOKIE), id, record);
      if (!check.ok) {
        // A page visit without a session signs in with the platform; the page's own API calls just get the 401.
        const signIn =
          options.sso && record && record.state !== 'deleted' && options.sso.appliesTo(record) && ctx.method === 'GET' && !ctx.path.includes('/api/');
        if (!signIn) return denied(ctx, check.reason, record, options.sso);
        const flow = await options.sso!.begin(record).catch(() => undefined);
        if (!flow)
          return problem(ctx, 502, 'Sign-in unavailable', "Cloud Foundry's login (UAA) did not answer, so you cannot sign in now. Try again in a moment.");
        ctx.cookies.set(flow.cookie, flow.sealed, {
          path: '/dashboard/sso',
          httpOnly: true,
          sameSite: 'lax',
          secure: options.secureCookies,
          maxAge: DashboardSso.flowSeconds * 1000,
        });
        return ctx.redirect(flow.location);
      }
      if (!record || record.state === 'deleted') return problem(ctx, 404, 'No such instance', 'This service instance does not exist (any more).');
      const { secrets: _secrets, ...instance } = record;
      await handler(ctx, instance);
    };

  // The way back from the platform's login (dashboard SSO): a session for the instance when Cloud Controller says the user may manage it.
  router.get('/sso/callback', async (ctx) => {
    if (!options.sso) return problem(ctx, 404, 'Not found', 'This broker has no dashboard sign-in.');
    const query = new URLSearchParams(ctx.querystring);
    const cookie = DashboardSso.cookieName(query.get('state') ?? '');
    const sealed = cookie ? ctx.cookies.get(cookie) : undefined;
    if (cookie && sealed) ctx.cookies.set(cookie, null, { path: '/dashboard/sso', overwrite: true });
    const signIn = await options.sso.finish(query, sealed);
    if (!signIn.ok) return problem(ctx, signIn.status, signIn.title, signIn.text);
    startSession(ctx, signIn.instanceId, { s: 'sso' });
  });

  router.get(
    '/instances/:id',
    authorised(async (ctx, instance) => {
      // The latest lines come with the page: on screen at first paint, and the script follows on from them.
      const lines = (await service.logs(instance, PAGE_LINES).catch(() => undefined)) ?? [];
      const csrf = armActions(ctx, tokens, ctx.cookies.get(COOKIE) ?? '', {
        path: options.links.pagePath(instance.id),
        secure: options.secureCookies,
        maxAgeSeconds: options.sessionTtlSeconds,
      });
      ctx.type = 'text/html; charset=utf-8';
      ctx.body = instancePage
        .replace('__CSRF__', csrf)
        .replace('__RESTART__', options.restarts ? '' : 'hidden')
        .replace('__LOGS__', logLinesHtml(lines));
    }),
  );

  router.get(
    '/instances/:id/api/details',
    authorised(async (ctx, instance) => {
      ctx.body = await service.details(instance);
    }),
  );

  router.get(
    '/instances/:id/api/engine',
    authorised(async (ctx, instance) => {
      ctx.body = options.engine
        ? await options.engine.card(instance)
        : { supported: false, reason: 'This broker reads no engine numbers.', stats: [], links: [] };
    }),
  );

  router.get(
    '/instances/:id/api/usage',
    authorised(async (ctx, instance) => {
      ctx.body = { usage: (await service.usage(instance)) ?? null };
    }),
  );

  router.get(
    '/instances/:id/api/usage/history',
    authorised(async (ctx, instance) => {
      ctx.body = await service.usageHistory(instance);
    }),
  );

  router.get(
    '/instances/:id/api/top',
    authorised(async (ctx, instance) => {
      const top = await service.top(instance);
      ctx.body = top ?? { titles: [], processes: [], explanation: 'The container is not running, so it has no processes.' };
    }),
  );

  router.get(
    '/instances/:id/api/logs',
    authorised(async (ctx, instance) => {
      const tail = Math.min(MAX_TAIL, Math.max(1, Number(ctx.query.tail) || 500));
      const lines = await service.logs(instance, tail);
      ctx.body = lines ? { lines } : { lines: [], explanation: 'The container does not exist, so there are no logs.' };
    }),
  );

  router.get(
    '/instances/:id/api/logs/download',
    authorised(async (ctx, instance) => {
      const lines = (await service.logs(instance, 1_000_000)) ?? [];
      ctx.type = 'text/plain; charset=utf-8';
      ctx.attachment(`${instance.id}.log`);
      ctx.body = lines.map((line) => `${line.time} ${line.stream} ${line.text}`).join('\n') + '\n';
    }),
  );

  router.get(
    '/instances/:id/api/logs/stream',
    authorised((ctx, instance) => {
      // Server-sent events: one event per new log line, a comment every 15 s to keep proxies from closing it.
      const stream = new PassThrough();
      const controller = new AbortController();
      ctx.req.socket.setTimeout(0);
      ctx.req.on('close', () => controller.abort());
      ctx.set('Content-Type', 'text/event-stream; charset=utf-8');
      ctx.set('X-Accel-Buffering', 'no');
      ctx.status = 200;
      ctx.body = stream;
      stream.write(': following\n\n');
      const heartbeat = setInterval(() => stream.write(': keep-alive\n\n'), 15_000);
      const since = Math.floor(Date.now() / 1000) - 1;
      service
        .follow(instance, since, (line) => stream.write(`data: ${JSON.stringify(line)}\n\n`), controller.signal)
        .catch(() => undefined)
        .finally(() => {
          clearInterval(heartbeat);
          stream.end('event: end\ndata: {}\n\n');
        });
    }),
  );

  router.get(
    '/instances/:id/api/backups',
    authorised(async (ctx, instance) => {
      ctx.body = options.backups
        ? await options.backups.panel(instance)
        : { supported: false, reason: 'this broker serves no backups', backups: [], schedule: null };
    }),
  );

  router.post(
    '/instances/:id/api/backups',
    sameOrigin,
    authorised(async (ctx, instance) => {
      if (!options.backups) return problem(ctx, 404, 'No backups', 'This broker serves no backups.');
      if (!actionAllowed(ctx, tokens, ctx.cookies.get(COOKIE))) return forbiddenAction(ctx);
      ctx.status = 202;
      ctx.body = await options.backups.start(instance);
    }),
  );

  router.post(
    '/instances/:id/api/restart',
    sameOrigin,
    authorised(async (ctx, instance) => {
      if (!options.restarts) return problem(ctx, 404, 'No restarts', 'This broker does not restart instances.');
      if (!actionAllowed(ctx, tokens, ctx.cookies.get(COOKIE))) return forbiddenAction(ctx);
      ctx.status = 202;
      ctx.body = await options.restarts.request(instance.id);
    }),
  );

  router.get(
    '/instances/:id/api/backups/:backup_id/download',
    authorised(async (ctx, instance) => {
      if (!options.backups) return problem(ctx, 404, 'No backups', 'This broker serves no backups.');
      const backupId = (ctx.params as Record<string, string>).backup_id!;
      const dump = await options.backups.download(instance, backupId);
      const name = typeof instance.context.instance_name === 'string' && instance.context.instance_name ? instance.context.instance_name : instance.id;
      ctx.type = 'application/octet-stream';
      ctx.attachment(`${name}-${backupId}.dump`);
      ctx.body = dump;
    }),
  );

  return router;
}

/** An action without this page's session token (a form or script of another site riding on the cookie). */
function forbiddenAction(ctx: Context): void {
  problem(ctx, 403, 'Forbidden', "The request does not carry this page's session token. Reload the page and try again.");
}

/**
 * Actions (POST) come from the page itself only: the browser's Origin must be this host, and a cross-site request
 * is refused before the session cookie is looked at. With the SameSite=Lax cookie this keeps other sites from
 * starting backups in a signed-in browser (CSRF).
 */
const sameOrigin: Middleware = async (ctx, next) => {
  const origin = ctx.get('Origin');
  const site = ctx.get('Sec-Fetch-Site');
  let originHost: string | undefined;
  try {
    originHost = origin ? new URL(origin).host : undefined;
  } catch {
    originHost = undefined;
  }
  if (originHost === undefined || originHost !== ctx.get('Host') || (site !== '' && site !== 'same-origin')) {
    return problem(ctx, 403, 'Forbidden', 'Actions are taken from the dashboard page itself (the request did not come from its origin).');
  }
  await next();
};

function denied(ctx: Context, reason: Denial, instance: InstanceRecord | undefined, sso: DashboardSso | undefined): void {
  const text = {
    missing: 'Open this dashboard through the link your platform shows for the service instance (it carries an access token).',
    invalid: 'The access token in this link is not valid: it was mistyped, replaced by a newer link, or its instance was deleted.',
    expired: 'The access token in this link has expired (instances made by an older broker have expiring links until their next update).',
    'other-instance': 'This access token belongs to another service instance.',
    replaced: 'The link this session was opened with has been replaced by a newer one.',
  }[reason];
  problem(ctx, 401, 'Access denied', `${text} ${accessAdvice(instance, sso)}`);
}

/** What to do next, in the words of the instance's platform (its context); the instance's name is not told. */
function accessAdvice(instance: InstanceRecord | undefined, sso: DashboardSso | undefined): string {
  const id = instance?.id ?? '<instance id>';
  const rotate = `an operator can make a new link (POST /broker/v1/instances/${id}/dashboard-link with the broker's credentials)`;
  if (instance && sso?.appliesTo(instance)) {
    return 'On Cloud Foundry, open the link `cf service <instance name>` shows: it signs you in with your Cloud Foundry account.';
  }
  switch (instance?.context.platform) {
    case 'cloudfoundry':
      return `On Cloud Foundry, \`cf service <instance name>\` shows the instance's dashboard link. If that link no longer works, ${rotate}; \`cf update-service <instance name> -c '{}'\` then makes Cloud Foundry show the new one.`;
    case 'kubernetes':
      return `On Kubernetes, the ServiceInstance's status.dashboardURL holds the link. If that link no longer works, ${rotate}.`;
    default:
      return `Ask your platform for the instance's dashboard link (the osb-docker CLI: \`osb-docker dashboard <name>\`), or use the broker's overview at /dashboard. If the link no longer works, ${rotate}.`;
  }
}

function problem(ctx: Context, status: number, title: string, text: string): void {
  ctx.status = status;
  if (ctx.path.includes('/api/')) {
    ctx.body = { error: title.replace(/\s+/g, ''), description: text };
    return;
  }
  ctx.type = 'text/html; charset=utf-8';
  ctx.body = problemPage(title, text);
}
