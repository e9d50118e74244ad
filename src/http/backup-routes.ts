import Router from '@koa/router';
import type { BackupService } from '../broker/backups.js';
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
  };
}

/**
 * The broker's own backup API, behind the broker's credentials (OSB has none): start, list, delete and download
 * (the decrypted dump, for export) the backups of an instance.
 */
export function backupRoutes(backups: BackupService): Router {
  const router = new Router({ prefix: '/broker/v1/instances/:instance_id/backups' });
  router.post('/', async (ctx) => {
    const backup = await backups.start(ctx.params.instance_id!);
    ctx.status = 202;
    ctx.body = { id: backup.id, state: backup.state };
  });
  router.get('/', async (ctx) => {
    ctx.body = { backups: (await backups.list(ctx.params.instance_id!)).map(view) };
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
