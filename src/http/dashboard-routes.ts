import Router from '@koa/router';
import type { Context, Middleware } from 'koa';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { DashboardBackups } from '../dashboard/backups.js';
import type { DashboardEngine } from '../dashboard/engine.js';
import type { DashboardInstance, DashboardService } from '../dashboard/service.js';
import type { DashboardTokens } from '../dashboard/tokens.js';
import { logLinesHtml, overviewPage, problemPage } from '../dashboard/pages.js';

export interface DashboardOptions {
  service: DashboardService;
  tokens: DashboardTokens;
  /** Folder with the page and its assets. */
  assetsDir: string;
  linkTtlSeconds: number;
  sessionTtlSeconds: number;
  secureCookies: boolean;
  /** Basic auth of the broker's own credentials, for the overview. */
  brokerAuth: Middleware;
  /** The backups panel; without it the panel says the broker keeps no backups. */
  backups?: DashboardBackups;
  /** The Engine card (the offering's stats and links); without it the card says the broker reads none. */
  engine?: DashboardEngine;
}

const COOKIE = 'osb_dashboard';
const ASSETS: Record<string, string> = {
  'app.js': 'text/javascript; charset=utf-8',
  'engine-stats.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};
const MAX_TAIL = 10_000;
/** As many as the tail selector's default. */
const PAGE_LINES = 500;

/** Links to an instance's dashboard carry a short-lived token; the overview mints fresh ones. */
export function dashboardLink(tokens: DashboardTokens, publicUrl: string, instanceId: string, ttlSeconds: number): string {
  return `${publicUrl}/dashboard/instances/${encodeURIComponent(instanceId)}?token=${tokens.mint('link', instanceId, ttlSeconds)}`;
}

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

  router.get('/assets/:file', (ctx) => {
    const file = ctx.params.file!;
    const body = assets.get(file);
    if (!body) return problem(ctx, 404, 'Not found', 'There is no such file.');
    ctx.type = ASSETS[file]!;
    ctx.set('Cache-Control', 'public, max-age=300');
    ctx.body = body;
  });

  router.get('/', options.brokerAuth, async (ctx) => {
    const rows = await service.overview();
    ctx.type = 'text/html; charset=utf-8';
    ctx.body = overviewPage(rows, (id) => `/dashboard/instances/${encodeURIComponent(id)}?token=${tokens.mint('link', id, options.linkTtlSeconds)}`);
  });

  /** The instance named in the path, once the token (first visit) or the cookie (afterwards) allows it. */
  const authorised =
    (handler: (ctx: Context, instance: DashboardInstance) => Promise<void> | void): Middleware =>
    async (ctx) => {
      const id = (ctx.params as Record<string, string>).id ?? '';
      const cookiePath = `/dashboard/instances/${encodeURIComponent(id)}`;
      const link = typeof ctx.query.token === 'string' ? ctx.query.token : undefined;
      if (link !== undefined) {
        const check = tokens.check(link, 'link', id);
        if (!check.ok) return denied(ctx, check.reason);
        ctx.cookies.set(COOKIE, tokens.mint('session', id, options.sessionTtlSeconds), {
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
        return;
      }
      const session = ctx.cookies.get(COOKIE);
      if (!session) return denied(ctx, 'missing');
      const check = tokens.check(session, 'session', id);
      if (!check.ok) return denied(ctx, check.reason);
      const instance = await service.instance(id);
      if (!instance) return problem(ctx, 404, 'No such instance', 'This service instance does not exist (any more).');
      await handler(ctx, instance);
    };

  router.get(
    '/instances/:id',
    authorised(async (ctx, instance) => {
      // The latest lines come with the page: on screen at first paint, and the script follows on from them.
      const lines = (await service.logs(instance, PAGE_LINES).catch(() => undefined)) ?? [];
      ctx.type = 'text/html; charset=utf-8';
      ctx.body = instancePage.replace('__LOGS__', logLinesHtml(lines));
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
      ctx.status = 202;
      ctx.body = await options.backups.start(instance);
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

function denied(ctx: Context, reason: 'missing' | 'invalid' | 'expired' | 'other-instance'): void {
  const text = {
    missing:
      "Open this dashboard through the link your platform shows for the service instance (it carries a short-lived access token), or through the broker's overview at /dashboard.",
    invalid: "The access token in this link is not valid. Open the dashboard again from your platform or from the broker's overview at /dashboard.",
    expired:
      "The access token in this link has expired. Ask your platform for the instance again (the dashboard URL it gets is fresh), or use the broker's overview at /dashboard.",
    'other-instance': 'This access token belongs to another service instance.',
  }[reason];
  problem(ctx, 401, 'Access denied', text);
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
