import Router from '@koa/router';
import type { BackupService } from '../broker/backups.js';
import type { InPlaceRestore, RestoreRequest } from '../broker/in-place-restore.js';
import { badRequest, BrokerError, payloadTooLarge } from '../osb/errors.js';
import type { BackupScheduler } from '../broker/backup-schedule.js';
import type { BackupRecord } from '../store/records.js';

/** A backup as the API shows it: no store key, no owner. */
function view(backup: BackupRecord) {
  return {
    id: backup.id,
    instance_id: backup.instanceId,
    state: backup.state,
    created: backup.createdAt,
    finished: backup.finishedAt,
    /** Bytes in the store (compressed and encrypted), and of the dump itself. */
    size: backup.storedBytes,
    dump_size: backup.plainBytes,
    sha256: backup.sha256,
    service_id: backup.serviceId,
    plan_id: backup.planId,
    maintenance_version: backup.maintenanceVersion,
    description: backup.description,
    /** manual (on demand), scheduled or import; records from before origins were kept were all on demand. */
    origin: backup.origin ?? 'manual',
  };
}

/**
 * The broker's own backup API, behind the broker's credentials (OSB has none): start, list, delete and download
 * (the decrypted dump, for export) the backups of an instance.
 */
export function backupRoutes(backups: BackupService, schedules?: Pick<BackupScheduler, 'describe'>): Router {
  const router = new Router({ prefix: '/broker/v1/instances/:instance_id/backups' });
  router.post('/', async (ctx) => {
    const backup = await backups.start(ctx.params.instance_id!);
    ctx.status = 202;
    ctx.body = { id: backup.id, state: backup.state };
  });
  router.get('/', async (ctx) => {
    const listed = await backups.list(ctx.params.instance_id!);
    ctx.body = { backups: listed.map(view), ...(schedules ? { schedule: await schedules.describe(ctx.params.instance_id!, listed) } : {}) };
  });
  // The dump streams from the request into the store (sealed); it is never held whole.
  router.post('/import', async (ctx) => {
    const type = ctx.get('Content-Type');
    if (type && !ctx.is('application/octet-stream')) throw badRequest('Send the dump as application/octet-stream.');
    const backup = await backups.import(ctx.params.instance_id!, ctx.req);
    ctx.status = 201;
    ctx.body = { id: backup.id, state: backup.state, size: backup.storedBytes, dump_size: backup.plainBytes };
  });
  router.delete('/:backup_id', async (ctx) => {
    await backups.remove(ctx.params.instance_id!, ctx.params.backup_id!);
    ctx.body = {};
  });
  router.get('/:backup_id/download', async (ctx) => {
    const dump = await backups.download(ctx.params.instance_id!, ctx.params.backup_id!);
    ctx.type = 'application/octet-stream';
    ctx.attachment(`${ctx.params.instance_id}-${ctx.params.backup_id}.dump`);
    ctx.body = dump;
  });
  return router;
}

/** What a restore request body may weigh: a few ids. */
const RESTORE_BODY_LIMIT = 16 * 1024;

/** POST /broker/v1/instances/:id/restore: a backup restored into the running instance, as an operation to poll (OSB last_operation). */
export function restoreRoutes(restores: InPlaceRestore): Router {
  const router = new Router();
  router.post('/broker/v1/instances/:instance_id/restore', async (ctx) => {
    const { operation } = await restores.request(ctx.params.instance_id!, await smallJson(ctx.req));
    ctx.status = 202;
    ctx.body = { operation };
  });
  return router;
}

async function smallJson(body: AsyncIterable<Buffer>): Promise<RestoreRequest> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > RESTORE_BODY_LIMIT) throw payloadTooLarge(RESTORE_BODY_LIMIT);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as RestoreRequest;
  } catch (error) {
    throw new BrokerError(400, 'MalformedJSON', `The request body is not valid JSON: ${(error as Error).message}`);
  }
}
