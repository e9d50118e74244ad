import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readdir, rename, rm, rmdir, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BackupStoreError, checkStoreKey, checkStorePrefix, type BackupStore, type PutOptions, type StoredObject } from './stores.js';

const TEMP_SUFFIX = '.partial';

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Backups as files in a folder: folders mode 700, files mode 600. A put writes `.<name>.<random>.partial` beside
 * the target, syncs it, renames it into place and syncs the folder, so a key shows either nothing or a whole,
 * durable object. Listings skip names starting with ".", so an interrupted put's leftover is never seen as a backup.
 */
export class LocalBackupStore implements BackupStore {
  readonly dir: string;
  private rootReady?: Promise<void>;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
  }

  describe(): string {
    return `local folder ${this.dir}`;
  }

  private pathOf(key: string): string {
    checkStoreKey(key);
    return path.join(this.dir, ...key.split('/'));
  }

  private fail(action: string, key: string, error: unknown): BackupStoreError {
    if (error instanceof BackupStoreError) return error;
    const detail = error instanceof Error ? error.message : String(error);
    return new BackupStoreError('failed', `${action} backup ${key} in ${this.describe()} failed: ${detail}`);
  }

  /** The root folder exists with mode 700 (tightened when it existed with a looser mode). */
  private ensureRoot(): Promise<void> {
    this.rootReady ??= (async () => {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      await chmod(this.dir, 0o700);
    })().catch((error: unknown) => {
      this.rootReady = undefined; // tried again next time
      throw error;
    });
    return this.rootReady;
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<{ bytes: number }> {
    const target = this.pathOf(key);
    const folder = path.dirname(target);
    const temp = path.join(folder, `.${path.basename(target)}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
    let handle: FileHandle | undefined;
    try {
      await this.ensureRoot();
      // A delete may remove an emptied folder between mkdir and open: make it again then.
      for (let attempt = 1; !handle; attempt++) {
        await mkdir(folder, { recursive: true, mode: 0o700 });
        try {
          handle = await open(temp, 'wx', 0o600);
        } catch (error) {
          if (errorCode(error) !== 'ENOENT' || attempt >= 3) throw error;
        }
      }
    } catch (error) {
      body.destroy();
      throw this.fail('writing', key, error);
    }
    let bytes = 0;
    try {
      options.signal?.throwIfAborted();
      // Not destroyed on leaving the loop: the catch below destroys it with the reason.
      for await (const chunk of body.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer | string>) {
        options.signal?.throwIfAborted();
        const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        try {
          await handle.write(buffer);
        } catch (error) {
          throw this.fail('writing', key, error);
        }
        bytes += buffer.length;
      }
      try {
        await handle.sync();
        await handle.close();
        handle = undefined;
        await rename(temp, target);
        await syncDir(folder);
      } catch (error) {
        throw this.fail('writing', key, error);
      }
      return { bytes };
    } catch (error) {
      // The body's own error (or the abort reason) is passed on unchanged; the temporary file goes. The body is
      // destroyed with this error, so whoever feeds it (putSealed's pipeline) fails with the cause too, at once, and
      // not with a bare "aborted" that would be reported first while this cleans up. This promise rejects with it
      // anyway, so a body nobody else listens to must not make it an uncaught error.
      if (!body.destroyed) body.on('error', () => {}).destroy(error as Error);
      await handle?.close().catch(() => undefined);
      await rm(temp, { force: true }).catch(() => undefined);
      throw error;
    }
  }

  async get(key: string): Promise<Readable> {
    const file = this.pathOf(key);
    try {
      const handle = await open(file, 'r');
      if (!(await handle.stat().catch(() => undefined))?.isFile()) {
        await handle.close();
        throw Object.assign(new Error('not a file'), { code: 'ENOENT' });
      }
      return handle.createReadStream({ highWaterMark: 64 * 1024 });
    } catch (error) {
      if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ENOTDIR') {
        throw new BackupStoreError('not-found', `backup ${key} does not exist in ${this.describe()}`);
      }
      throw this.fail('reading', key, error);
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    try {
      await rm(file, { force: true });
    } catch (error) {
      throw this.fail('deleting', key, error);
    }
    // Folders left empty go too, up to (not including) the root; one still in use stays.
    for (let folder = path.dirname(file); folder !== this.dir && folder.startsWith(this.dir + path.sep); folder = path.dirname(folder)) {
      try {
        await rmdir(folder);
      } catch {
        break;
      }
    }
  }

  async list(prefix = ''): Promise<StoredObject[]> {
    checkStorePrefix(prefix);
    const folderPart = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    const found: StoredObject[] = [];
    const walk = async (folder: string, keyPrefix: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(folder, { withFileTypes: true });
      } catch (error) {
        if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ENOTDIR') return;
        throw this.fail('listing', prefix || '(all)', error);
      }
      for (const entry of entries) {
        if (entry.name.startsWith('.')) continue;
        const key = keyPrefix + entry.name;
        if (entry.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(key + '/')) await walk(path.join(folder, entry.name), key + '/');
        } else if (entry.isFile() && key.startsWith(prefix)) {
          try {
            const info = await stat(path.join(folder, entry.name));
            found.push({ key, bytes: info.size, modified: info.mtime });
          } catch (error) {
            if (errorCode(error) !== 'ENOENT') throw this.fail('listing', key, error);
          }
        }
      }
    };
    await walk(folderPart ? path.join(this.dir, ...folderPart.split('/').filter(Boolean)) : this.dir, folderPart);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}
