import Router from '@koa/router';
import { PassThrough } from 'node:stream';
import type { DashboardService } from '../dashboard/service.js';
import type { LogLine } from '../docker/types.js';
import { badRequest, notFound } from '../osb/errors.js';

const DEFAULT_TAIL = 100;
const MAX_TAIL = 100_000;

/**
 * The operator's view of one instance behind the broker's credentials, for `osb-docker info` and `logs`: what the
 * dashboard shows (the engine's state of the container, limits, endpoints) and the container's log, redacted by the
 * dashboard's own service. No secrets.
 */
export function operatorRoutes(service: DashboardService): Router {
  const router = new Router({ prefix: '/broker/v1/instances/:instance_id' });

  const instanceOf = async (id: string) => {
    const instance = await service.instance(id);
    if (!instance) throw notFound(`There is no service instance ${JSON.stringify(id)}.`);
    return instance;
  };

  router.get('/', async (ctx) => {
    const instance = await instanceOf(ctx.params.instance_id!);
    ctx.body = { ...(await service.details(instance)), container_name: instance.containerName };
  });

  // Plain text, one log line per line (stdout and stderr as the engine interleaved them); follow=true keeps the
  // response open and adds each new line until the container stops or the client leaves.
  router.get('/logs', async (ctx) => {
    const instance = await instanceOf(ctx.params.instance_id!);
    const tail = ctx.query.tail === undefined ? DEFAULT_TAIL : Number(ctx.query.tail);
    if (!Number.isInteger(tail) || tail < 0 || tail > MAX_TAIL) throw badRequest(`tail must be a whole number from 0 to ${MAX_TAIL}.`);
    const follow = ctx.query.follow === 'true';
    // The second before the tail is read: a line written meanwhile comes with the tail or with the follow, never neither.
    const since = Math.floor(Date.now() / 1000) - 1;
    const lines = tail === 0 ? [] : await service.logs(instance, tail);
    if (!lines) throw notFound('The container of this instance does not exist, so there are no logs.');
    ctx.type = 'text/plain; charset=utf-8';
    ctx.set('Cache-Control', 'no-store');
    if (!follow) {
      ctx.body = lines.map((line) => `${line.text}\n`).join('');
      return;
    }
    const stream = new PassThrough();
    const controller = new AbortController();
    ctx.req.socket.setTimeout(0);
    ctx.req.on('close', () => controller.abort());
    ctx.set('X-Accel-Buffering', 'no');
    ctx.status = 200;
    ctx.body = stream;
    for (const line of lines) stream.write(`${line.text}\n`);
    const seen = alreadySent(lines);
    service
      .follow(instance, since, (line) => seen(line) || stream.write(`${line.text}\n`), controller.signal)
      .catch(() => undefined)
      .finally(() => stream.end());
  });

  return router;
}

/** Whether a followed line is one the tail already held (the follow starts a second before the tail was read). */
function alreadySent(tail: LogLine[]): (line: LogLine) => boolean {
  const last = comparable(tail.at(-1)?.time ?? '');
  const atLast = new Set(tail.filter((line) => comparable(line.time) === last).map((line) => `${line.stream} ${line.text}`));
  return (line) => {
    const time = comparable(line.time);
    return time < last || (time === last && atLast.has(`${line.stream} ${line.text}`));
  };
}

/** The engine's RFC 3339 times drop trailing zeros of the fraction; padded to nine digits they compare as text. */
const comparable = (time: string) => time.replace(/(?:\.(\d+))?Z$/, (_, fraction: string | undefined) => `.${(fraction ?? '').padEnd(9, '0')}Z`);
