import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { ListedInstance } from '../api/listing.js';
import { usageOf } from './args.js';
import { describeBody, expect, type BrokerClient } from './client.js';
import { CliError, UsageError } from './errors.js';
import { instancePath, list, resolve, type Io, type Run } from './run.js';
import { formatTable } from './table.js';
import { ByteCounter, megabytes, seconds } from './transfer.js';

/** A backup as GET /broker/v1/instances/:id/backups lists it (the fields the CLI reads). */
interface ListedBackup {
  id: string;
  state: 'in progress' | 'succeeded' | 'failed';
  /** manual, scheduled or import; older brokers do not say. */
  origin?: string;
  created: string;
  finished?: string;
  size?: number;
  dump_size?: number;
  description?: string;
}

/** The instance's backup schedule, when the broker has schedules. */
interface BackupSchedule {
  cron: string | null;
  source: 'instance' | 'broker' | 'off';
  next: string | null;
  last_success: string | null;
  last_failure: { at: string; description: string } | null;
}

interface BackupList {
  backups: ListedBackup[];
  schedule?: BackupSchedule;
}

export const BACKUP_RUNNERS: Record<string, (run: Run) => Promise<void>> = {
  backup,
  backups: backupsCommand,
  restore,
  export: exportCommand,
  import: importCommand,
};

const backupsPath = (instanceId: string) => `/broker/v1/instances/${encodeURIComponent(instanceId)}/backups`;
/** "2026-11-30 01:02:03 UTC": what people read in a table. */
const when = (iso: string | null | undefined) => (iso ? `${iso.slice(0, 19).replace('T', ' ')} UTC` : '-');
const nameOf = (instance: ListedInstance) => instance.name ?? instance.id;

/**
 * The instance whose backups a command works with: by name (or id) from the listing or, as backups outlive their
 * instance, the id of a deleted instance that still has some.
 */
async function backedUp(client: BrokerClient, name: string): Promise<{ id: string; name: string }> {
  try {
    const instance = resolve(await client.instances(), name);
    return { id: instance.id, name: nameOf(instance) };
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    const reply = await client.request('GET', backupsPath(name));
    if (reply.status === 200) return { id: name, name };
    throw error;
  }
}

async function listBackups(client: BrokerClient, instance: { id: string; name: string }): Promise<BackupList> {
  const reply = await client.request('GET', backupsPath(instance.id));
  expect(reply, [200], `listing the backups of ${instance.name}`);
  const body = reply.body as unknown as Partial<BackupList>;
  return { backups: body.backups ?? [], ...(body.schedule ? { schedule: body.schedule } : {}) };
}

/** The backup --backup names (an id, or latest), or else the newest succeeded one; it must have succeeded. */
function chooseBackup(backups: ListedBackup[], wanted: string | undefined, instanceName: string): ListedBackup {
  const latest = wanted === undefined || wanted === 'latest';
  const chosen = latest ? backups.find((backup) => backup.state === 'succeeded') : backups.find((backup) => backup.id === wanted);
  if (!chosen) {
    if (latest) throw new CliError(`${instanceName} has no succeeded backup; make one with \`osb-docker backup ${instanceName}\``);
    throw new CliError(`${instanceName} has no backup "${wanted}"; backups: ${list(backups.map((backup) => backup.id))}`);
  }
  if (chosen.state !== 'succeeded') {
    throw new CliError(
      `backup ${chosen.id} of ${instanceName} is ${chosen.state}${chosen.description ? ` (${chosen.description})` : ''}; only a succeeded one can be used`,
    );
  }
  return chosen;
}

/** `create --from-backup <name>[:<id>]`: the provision parameter restore_from. */
export async function restoreSource(client: BrokerClient, value: string): Promise<{ instance: string; backup: string }> {
  const colon = value.lastIndexOf(':');
  const [name, backupId] = colon > 0 ? [value.slice(0, colon), value.slice(colon + 1)] : [value, 'latest'];
  if (!backupId) throw new UsageError(`--from-backup ${value}: a backup id belongs after the colon (or leave the colon out for the latest)`);
  const source = await backedUp(client, name);
  return { instance: source.id, backup: backupId };
}

// backup

async function backup({ client, args, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = nameOf(instance);
  const started = Date.now();
  const reply = await client.request('POST', backupsPath(instance.id));
  if (reply.status !== 202 || typeof reply.body.id !== 'string') throw new CliError(`the broker refused to back ${name} up: ${describeBody(reply.body)}`);
  const id = reply.body.id;
  io.err(`Backing ${name} up (backup ${id})…`);
  const done = await followBackup(client, io, { id: instance.id, name }, id);
  if (done.state === 'failed') throw new CliError(`backup ${id} of ${name} failed: ${done.description ?? 'no description'}`);
  const took = done.finished ? Date.parse(done.finished) - Date.parse(done.created) : Date.now() - started;
  const dump = done.dump_size === undefined ? '' : ` (dump ${megabytes(done.dump_size)})`;
  io.out(`Backed up ${name}: backup ${id}, ${done.size === undefined ? 'size unknown' : megabytes(done.size)}${dump}, in ${seconds(took)}.`);
}

/** Polls the listing until the backup has ended, with a progress line of the time it has taken so far. */
async function followBackup(client: BrokerClient, io: Io, instance: { id: string; name: string }, backupId: string): Promise<ListedBackup> {
  const started = Date.now();
  let shownAt = 0;
  for (;;) {
    const found = (await listBackups(client, instance)).backups.find((candidate) => candidate.id === backupId);
    if (!found) throw new CliError(`backup ${backupId} of ${instance.name} is gone from the broker's list (deleted meanwhile?)`);
    if (found.state !== 'in progress') {
      if (io.progressInPlace && shownAt) io.progress('');
      return found;
    }
    if (Date.now() - shownAt >= (io.progressInPlace ? 0 : 10_000)) {
      shownAt = Date.now();
      io.progress(`  backing up ${instance.name}: ${seconds(Date.now() - started)} so far`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// backups

async function backupsCommand({ client, args, flags, io }: Run): Promise<void> {
  const instance = await backedUp(client, args[0]!);
  const listed = await listBackups(client, instance);
  if (flags.json) return io.out(JSON.stringify(listed, null, 2));
  if (listed.backups.length === 0) io.out(`No backups of ${instance.name} yet. Make one with: osb-docker backup ${instance.name}`);
  else {
    io.out(
      formatTable(
        ['ID', 'STATE', 'ORIGIN', 'CREATED', 'SIZE', 'DESCRIPTION'],
        listed.backups.map((entry) => [
          entry.id,
          entry.state,
          entry.origin ?? '-',
          when(entry.created),
          entry.size === undefined ? '-' : megabytes(entry.size),
          entry.state === 'failed' ? (entry.description ?? '') : '',
        ]),
      ),
    );
  }
  if (listed.schedule) io.out(scheduleLine(listed.schedule));
}

function scheduleLine(schedule: BackupSchedule): string {
  if (schedule.source === 'off' || !schedule.cron) return 'Schedule: off (no scheduled backups)';
  const from = schedule.source === 'broker' ? "the broker's default" : "this instance's";
  const failure = schedule.last_failure ? `; last failure ${when(schedule.last_failure.at)}: ${schedule.last_failure.description}` : '';
  return `Schedule: ${schedule.cron} (${from}); next run ${when(schedule.next)}; last success ${schedule.last_success ? when(schedule.last_success) : 'never'}${failure}`;
}

// restore

async function restore({ client, args, flags, io }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = nameOf(instance);
  const chosen = chooseBackup((await listBackups(client, { id: instance.id, name })).backups, flags.backup, name);
  await restoreInPlace(client, io, instance, chosen.id);
}

/** POST …/restore, then follows the operation through OSB's last_operation. */
async function restoreInPlace(client: BrokerClient, io: Io, instance: ListedInstance, backupId: string): Promise<void> {
  const name = nameOf(instance);
  const started = Date.now();
  const reply = await client.request('POST', `/broker/v1/instances/${encodeURIComponent(instance.id)}/restore`, { backup: backupId });
  if (reply.status !== 202) throw new CliError(`the broker refused to restore ${name} from backup ${backupId}: ${describeBody(reply.body)}`);
  io.err(`Restoring ${name} from backup ${backupId}…`);
  const operation = typeof reply.body.operation === 'string' ? `?operation=${encodeURIComponent(reply.body.operation)}` : '';
  const done = await client.waitFor(`${instancePath(instance.id)}/last_operation${operation}`, (description) => io.err(`  ${description}`));
  if (done.state !== 'succeeded') throw new CliError(`restoring ${name} from backup ${backupId} failed: ${done.description ?? 'the instance disappeared'}`);
  io.out(`Restored ${name} from backup ${backupId} in ${seconds(Date.now() - started)}.`);
}

// export

async function exportCommand({ client, args, flags, io }: Run): Promise<void> {
  const instance = await backedUp(client, args[0]!);
  const chosen = chooseBackup((await listBackups(client, instance)).backups, flags.backup, instance.name);
  const file = args[1] ?? `${instance.name.replace(/[^\w.-]+/g, '_')}-${chosen.id}.dump`;
  const toStdout = file === '-';
  if (!toStdout && existsSync(file)) throw new CliError(`${file} already exists; remove it or name another file`);
  const response = await client.stream('GET', `${backupsPath(instance.id)}/${encodeURIComponent(chosen.id)}/download`);
  if (response.status !== 200 || !response.body) {
    throw new CliError(`the broker answered ${response.status} when downloading backup ${chosen.id} of ${instance.name}: ${await errorText(response)}`);
  }
  const body = Readable.fromWeb(response.body as WebReadableStream<Uint8Array>);
  // No progress on stderr when stdout is the dump: it is often piped into a tool that writes its own.
  const counter = new ByteCounter(`  exporting backup ${chosen.id}:`, toStdout ? undefined : io, chosen.dump_size);
  if (toStdout) {
    await pipeline(body, counter, io.stdout, { end: false }).catch((error: unknown) => {
      throw new CliError(`the export of backup ${chosen.id} broke off after ${megabytes(counter.bytes)}: ${(error as Error).message}`);
    });
    checkComplete(counter, chosen);
    return;
  }
  // Written beside the file and renamed at the end: a broken-off export never looks like a whole dump.
  const partial = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(4).toString('hex')}.partial`);
  try {
    await pipeline(body, counter, createWriteStream(partial, { flags: 'wx', mode: 0o600 })).catch((error: unknown) => {
      throw new CliError(`the export of backup ${chosen.id} broke off after ${megabytes(counter.bytes)}: ${(error as Error).message}`);
    });
    checkComplete(counter, chosen);
    renameSync(partial, file);
  } catch (error) {
    rmSync(partial, { force: true });
    throw error;
  } finally {
    counter.clear();
  }
  io.err(`Exported backup ${chosen.id} of ${instance.name}: ${counter.summary()}.`);
  io.out(file);
}

/** The dump's size is recorded with the backup: anything else means the transfer was cut. */
function checkComplete(counter: ByteCounter, backup: ListedBackup): void {
  if (backup.dump_size !== undefined && counter.bytes !== backup.dump_size) {
    throw new CliError(`the export of backup ${backup.id} ended after ${counter.bytes} of its ${backup.dump_size} bytes`);
  }
}

async function errorText(response: Response): Promise<string> {
  const text = await response.text().catch(() => '');
  try {
    return describeBody(JSON.parse(text));
  } catch {
    return text.trim().slice(0, 300) || 'no description';
  }
}

// import

async function importCommand({ client, args, io, command }: Run): Promise<void> {
  const instance = resolve(await client.instances(), args[0]!);
  const name = nameOf(instance);
  const file = args[1] ?? '-';
  const fromStdin = file === '-';
  if (fromStdin && (io.stdin as { isTTY?: boolean }).isTTY) throw new UsageError('import: name a dump file, or pipe one into stdin', usageOf(command));
  let size: number | undefined;
  if (!fromStdin) {
    try {
      const stat = statSync(file);
      if (!stat.isFile()) throw new CliError(`${file} is not a file`);
      size = stat.size;
    } catch (error) {
      if (error instanceof CliError) throw error;
      throw new CliError(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
  }
  const source = fromStdin ? io.stdin : createReadStream(file);
  const counter = new ByteCounter(`  uploading ${fromStdin ? 'stdin' : file}:`, io, size);
  let readError: Error | undefined;
  const upload = pipeline(source, counter).catch((error: Error) => {
    readError = error;
  });
  io.err(`Importing ${fromStdin ? 'stdin' : file} into ${name}…`);
  // The broker may answer (or fail) before it has read the whole upload: then stop reading what it no longer wants.
  const stopReading = () => {
    source.destroy();
    counter.destroy();
    return upload;
  };
  let response: Response;
  try {
    response = await client.stream('POST', `${backupsPath(instance.id)}/import`, counter);
  } catch (error) {
    await stopReading();
    throw error;
  } finally {
    counter.clear();
  }
  const text = await response.text();
  if (response.status !== 201) {
    await stopReading();
    throw new CliError(`the broker refused the import into ${name}: ${await errorText(new Response(text, { status: response.status }))}`);
  }
  await upload;
  if (readError) throw new CliError(`reading ${fromStdin ? 'stdin' : file} failed: ${readError.message}`);
  const imported = JSON.parse(text) as { id: string; size?: number };
  io.err(`Uploaded ${counter.summary()}: backup ${imported.id} of ${name}${imported.size === undefined ? '' : `, ${megabytes(imported.size)} stored`}.`);
  await restoreInPlace(client, io, instance, imported.id);
}
