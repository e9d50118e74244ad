import { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { waitFor } from '../wait.js';
import { LockTimeoutError, StoreUnavailableError } from './errors.js';
import type {
  BackupRecord,
  BackupScheduleMark,
  BindingRecord,
  EngineStatsRecord,
  HealthRecord,
  InstanceRecord,
  OperationRecord,
  PortReservation,
} from './records.js';
import type { Sealer } from './sealer.js';
import type { StoredCertificate } from '../tls/certificates.js';
import { UsageHistoryStore } from './usage-history.js';
import {
  CLAIM_LEASE,
  CLAIM_SCHEDULED_RUN,
  EXTEND_IF_OWNER,
  LATEST_OPERATION,
  RELEASE_IF_OWNER,
  RELEASE_PORT,
  RESERVE_PORT,
  RETIRE_LATEST_OF,
  RETIRE_REPLACED,
  SETTLE_FINISHED,
} from './lua.js';

/** A key part as it is when it holds only [A-Za-z0-9_.-] (every id of earlier versions), else percent-encoded UTF-8. */
const keyPart = (part: string) =>
  part.replace(/[^A-Za-z0-9_.-]/gu, (char) => [...Buffer.from(char)].map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join(''));

const FINISHED_OPERATION_TTL_SECONDS = 7 * 24 * 3600;
/** Renewed every third of it while held, so a dead holder's locks lapse within this. */
const LOCK_TTL_MS = 10_000;

/** Reply errors that mean "not now" rather than "wrong request". */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN)\b/;

/**
 * A command that failed because Redis is away (connection down or refused, no answer within the command time-out,
 * still loading its data) becomes a StoreUnavailableError; a reply error to a wrong request stays as it is.
 */
function unavailable(error: Error): Error {
  if (error instanceof StoreUnavailableError) return error;
  if (error.name === 'ReplyError' && !TRANSIENT_REPLY.test(error.message)) return error;
  // Connection errors name the address, never the password.
  return new StoreUnavailableError(`the state store (Redis) did not answer: ${error.message}`, { cause: error });
}

/** ioredis where every command, the store's own and any added later alike, fails with StoreUnavailableError when Redis is away. */
class GuardedRedis extends Redis {
  override sendCommand(...args: Parameters<Redis['sendCommand']>): unknown {
    const [command] = args;
    const reject = command.reject;
    command.reject = (error: Error) => reject(unavailable(error));
    return super.sendCommand(...args);
  }
}

/**
 * Broker state in Redis. Records are JSON strings; their `secrets` field is sealed before it is written.
 * Keys: instance:<id>, instances (set), binding:<instance>:<binding>, bindings:<instance> (set),
 * operation:<id>, port:<n> (value: instance id), ports:<instance> (set of its ports), lock:<name>,
 * health:<instance> (what the engine really runs, removed with the instance), backup:<instance>:<backup>,
 * backups:<instance> (sorted set), backup-schedule:<instance> (hash: cron, last, failure), backups-deleted and
 * backup-last-success and engine-stats (hashes by instance id), tls-ca (the CA for instances' certificates), tls:<instance> (its
 * server certificate, key sealed), usage:<instance> and disk:<instance> (capped lists of recent usage samples, see
 * usage-history.ts; removed with the instance);
 * all under "osb:<broker id>:".
 */
export class RedisStore {
  private readonly redis: Redis;
  private readonly prefix: string;
  private reached = false;
  private lastError?: string;
  /** The URL without credentials, for messages. */
  private readonly where: string;
  /** Each instance's recent usage samples, for the dashboard's charts, the listing's disk usage and the metrics. */
  readonly usage: UsageHistoryStore;

  constructor(
    url: string,
    brokerId: string,
    private readonly sealer: Sealer,
    /** Called once when Redis, reached before, goes away. */
    onError: (error: Error) => void = () => {},
    options: {
      /** How long one command may wait for its answer before it fails with StoreUnavailableError. */
      commandTimeoutMs?: number;
      /** Called when Redis answers again after onError. */
      onBack?: () => void;
    } = {},
  ) {
    // Fail fast while Redis is away: no queue of commands waiting for a connection, a bounded wait for each answer,
    // and reconnection in the background (at most a second apart) to the same address.
    this.redis = new GuardedRedis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.commandTimeoutMs ?? 2000,
      connectTimeout: Math.max(1000, options.commandTimeoutMs ?? 2000),
      retryStrategy: (attempt) => Math.min(attempt * 100, 1000),
    });
    // Commands fail on their own when Redis is away; the event is only worth a log line once Redis was reached
    // (before that, connect() retries while a freshly started Redis boots), and once per outage.
    let away = false;
    this.redis.on('error', (error: Error) => {
      this.lastError = error.message;
      if (this.reached && !away) {
        away = true;
        onError(error);
      }
    });
    this.redis.on('ready', () => {
      if (!away) return;
      away = false;
      options.onBack?.();
    });
    this.prefix = `osb:${brokerId}:`;
    this.usage = new UsageHistoryStore(this.redis, (...parts) => this.key(...parts));
    this.where = url.replace(/\/\/[^@/]*@/, '//');
  }

  async connect(timeoutMs = 10_000): Promise<void> {
    let failure = '';
    await waitFor(
      async () => {
        try {
          if (this.redis.status === 'wait' || this.redis.status === 'end') await this.redis.connect();
          await this.redis.ping();
          return true;
        } catch (error) {
          failure = this.lastError ?? (error as Error).message;
          return undefined;
        }
      },
      {
        intervalMs: 200,
        timeoutMs,
        onTimeout: () => new Error(`cannot reach Redis at ${this.where} (${failure}); check REDIS_URL, or leave it unset to let the broker run its own`),
      },
    );
    this.reached = true;
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  /** One PING, for readiness checks. The caller bounds the wait; a failure's message never holds the password. */
  async ping(): Promise<void> {
    try {
      await this.redis.ping();
    } catch (error) {
      const original = error instanceof Error && error.cause instanceof Error ? error.cause : error;
      const message = original instanceof Error ? original.message : String(original);
      // Without a connection, the connection's own error ("connect ECONNREFUSED …") says more than the command's.
      const reason = this.redis.status === 'ready' ? message : `not connected: ${this.lastError ?? message}`;
      const { password } = this.redis.options;
      // No cause on purpose: the original error's text is what may hold the password.
      // eslint-disable-next-line preserve-caught-error
      throw new Error(password ? reason.split(password).join('***') : reason);
    }
  }

  /** Each part percent-encoded but for [A-Za-z0-9_.-], so ids with ":" (or glob characters) never meet another key. */
  private key(...parts: string[]): string {
    return this.prefix + parts.map(keyPart).join(':');
  }

  // Instances

  async getInstance(id: string): Promise<InstanceRecord | undefined> {
    return this.read<InstanceRecord>(this.key('instance', id));
  }

  async putInstance(record: InstanceRecord): Promise<void> {
    const key = this.key('instance', record.id);
    await this.retireReplaced(key, record.lastOperationId, record.state === 'deleted');
    if (record.state === 'deleted') {
      await this.redis
        .multi()
        .set(key, this.write(key, record), 'EX', this.tombstoneSeconds)
        .srem(this.key('instances'), record.id)
        .del(this.key('health', record.id))
        .del(this.key('tls', record.id))
        .del(...this.usage.keysOf(record.id))
        .exec();
    } else {
      await this.redis.multi().set(key, this.write(key, record)).sadd(this.key('instances'), record.id).exec();
    }
  }

  async listInstances(): Promise<InstanceRecord[]> {
    const ids = await this.redis.smembers(this.key('instances'));
    const records = await Promise.all(ids.map((id) => this.getInstance(id)));
    return records.filter((record): record is InstanceRecord => record !== undefined);
  }

  /** What the engine really runs for a ready instance, as the reconciler last found it. */
  async getHealth(instanceId: string): Promise<HealthRecord | undefined> {
    return this.read<HealthRecord>(this.key('health', instanceId));
  }

  async putHealth(instanceId: string, record: HealthRecord): Promise<void> {
    const key = this.key('health', instanceId);
    await this.redis.set(key, this.write(key, record));
  }

  // TLS: the broker's CA, one for every replica, and each instance's server certificate (removed with the instance)

  async getTlsCa(): Promise<{ cert: string; secrets: { key: string } } | undefined> {
    return this.read(this.key('tls-ca'));
  }

  /** Writes the CA unless one is there: replicas that start at once all end with the first one's. */
  async putTlsCaIfAbsent(ca: { cert: string; secrets: { key: string } }): Promise<boolean> {
    const key = this.key('tls-ca');
    return (await this.redis.set(key, this.write(key, ca), 'NX')) === 'OK';
  }

  async getInstanceTls(instanceId: string): Promise<StoredCertificate | undefined> {
    return this.read<StoredCertificate>(this.key('tls', instanceId));
  }

  async putInstanceTls(instanceId: string, record: StoredCertificate): Promise<void> {
    const key = this.key('tls', instanceId);
    await this.redis.set(key, this.write(key, record));
  }

  /** How long deleted instances and bindings keep answering last_operation with "succeeded". */
  tombstoneSeconds = 3600;

  // Bindings

  async getBinding(instanceId: string, bindingId: string): Promise<BindingRecord | undefined> {
    return this.read<BindingRecord>(this.key('binding', instanceId, bindingId));
  }

  async putBinding(record: BindingRecord): Promise<void> {
    const key = this.key('binding', record.instanceId, record.id);
    const set = this.key('bindings', record.instanceId);
    await this.retireReplaced(key, record.lastOperationId, record.state === 'deleted');
    if (record.state === 'deleted') {
      await this.redis.multi().set(key, this.write(key, record), 'EX', this.tombstoneSeconds).srem(set, record.id).exec();
    } else {
      await this.redis.multi().set(key, this.write(key, record)).sadd(set, record.id).exec();
    }
  }

  /** Removes every binding record of an instance, tombstones included. */
  async deleteBindingsOf(instanceId: string): Promise<void> {
    const keys = await this.scan(`${this.key('binding', instanceId)}:*`);
    if (keys.length) await this.redis.eval(RETIRE_LATEST_OF, keys.length, ...keys, this.tombstoneSeconds, this.operationPrefix());
    await this.redis.del(this.key('bindings', instanceId), ...keys);
  }

  async listBindings(instanceId: string): Promise<BindingRecord[]> {
    const ids = await this.redis.smembers(this.key('bindings', instanceId));
    const records = await Promise.all(ids.map((id) => this.getBinding(instanceId, id)));
    return records.filter((record): record is BindingRecord => record !== undefined);
  }

  // Backups

  async putBackup(record: BackupRecord): Promise<void> {
    const key = this.key('backup', record.instanceId, record.id);
    await this.redis
      .multi()
      .set(key, JSON.stringify(record))
      .zadd(this.key('backups', record.instanceId), String(Date.parse(record.createdAt)), record.id)
      .exec();
  }

  async getBackup(instanceId: string, backupId: string): Promise<BackupRecord | undefined> {
    return this.read<BackupRecord>(this.key('backup', instanceId, backupId));
  }

  /** The instance's backups, oldest first. */
  async listBackups(instanceId: string): Promise<BackupRecord[]> {
    const ids = await this.redis.zrange(this.key('backups', instanceId), '0', '-1');
    const records = await Promise.all(ids.map((id) => this.getBackup(instanceId, id)));
    return records.filter((record): record is BackupRecord => record !== undefined);
  }

  async deleteBackup(instanceId: string, backupId: string): Promise<void> {
    await this.redis
      .multi()
      .del(this.key('backup', instanceId, backupId))
      .zrem(this.key('backups', instanceId), backupId)
      .exec();
  }

  // Backup schedules, and the backups of deleted instances

  /** The last scheduled run a replica claimed for the instance (for the expression it was claimed under), and the last run that could not start. */
  async getBackupSchedule(instanceId: string): Promise<BackupScheduleMark | undefined> {
    const fields = await this.redis.hgetall(this.key('backup-schedule', instanceId));
    if (fields.cron === undefined) return undefined;
    return {
      cron: fields.cron,
      lastRunMs: Number(fields.last),
      failure: fields.failure === undefined ? undefined : (JSON.parse(fields.failure) as BackupScheduleMark['failure']),
    };
  }

  /**
   * Claims the scheduled run at `runMs` of `cron` for this caller: true for exactly one caller of all replicas, and
   * only when no later (or the same) run of that expression was claimed before.
   */
  async claimScheduledBackup(instanceId: string, cron: string, runMs: number): Promise<boolean> {
    return (await this.redis.eval(CLAIM_SCHEDULED_RUN, 1, this.key('backup-schedule', instanceId), cron, String(runMs))) === 1;
  }

  async putScheduledBackupFailure(instanceId: string, failure: { at: string; description: string }): Promise<void> {
    await this.redis.hset(this.key('backup-schedule', instanceId), 'failure', JSON.stringify(failure));
  }

  /** When the instance's last backup succeeded (seconds since the epoch), for the metric. */
  async setBackupLastSuccess(instanceId: string, seconds: number): Promise<void> {
    await this.redis.hset(this.key('backup-last-success'), instanceId, String(seconds));
  }

  /** An instance's last engine stats reading, where every replica's /metrics and dashboard read it. */
  async setEngineStats(instanceId: string, record: EngineStatsRecord): Promise<void> {
    await this.redis.hset(this.key('engine-stats'), instanceId, JSON.stringify(record));
  }

  async engineStats(): Promise<Map<string, EngineStatsRecord>> {
    const fields = await this.redis.hgetall(this.key('engine-stats'));
    return new Map(Object.entries(fields).map(([instanceId, json]) => [instanceId, JSON.parse(json) as EngineStatsRecord]));
  }

  /** Drops the readings of instances that are gone. */
  async forgetEngineStats(instanceIds: string[]): Promise<void> {
    if (instanceIds.length > 0) await this.redis.hdel(this.key('engine-stats'), ...instanceIds);
  }

  async backupLastSuccesses(): Promise<Map<string, number>> {
    const fields = await this.redis.hgetall(this.key('backup-last-success'));
    return new Map(Object.entries(fields).map(([instanceId, seconds]) => [instanceId, Number(seconds)]));
  }

  /** Ids of instances, live or deleted, that have backup records or a schedule mark. */
  async instancesWithBackupState(): Promise<string[]> {
    const ids = new Set<string>();
    for (const kind of ['backups', 'backup-schedule']) {
      const prefix = `${this.key(kind)}:`;
      for (const key of await this.scan(`${prefix}*`)) ids.add(decodeURIComponent(key.slice(prefix.length)));
    }
    return [...ids];
  }

  /** Since when the instance's backups have been without a live instance: the time first recorded (`at`, if none was). */
  async markBackupsOrphaned(instanceId: string, at: string): Promise<string> {
    const key = this.key('backups-deleted');
    await this.redis.hsetnx(key, instanceId, at);
    return (await this.redis.hget(key, instanceId)) ?? at;
  }

  /** Forgets the schedule mark, deletion time and last success of an instance whose backups are all gone. */
  async forgetBackupState(instanceId: string): Promise<void> {
    await this.redis
      .multi()
      .del(this.key('backup-schedule', instanceId))
      .hdel(this.key('backups-deleted'), instanceId)
      .hdel(this.key('backup-last-success'), instanceId)
      .exec();
  }

  // Operations

  async getOperation(id: string): Promise<OperationRecord | undefined> {
    return this.read<OperationRecord>(this.key('operation', id));
  }

  /** The latest operation of an instance or binding in one round trip; undefined when that resource has no record. */
  async latestOperation(instanceId: string, bindingId?: string): Promise<{ operation?: OperationRecord } | undefined> {
    const resource = bindingId === undefined ? this.key('instance', instanceId) : this.key('binding', instanceId, bindingId);
    const found = (await this.redis.eval(LATEST_OPERATION, 1, resource, this.operationPrefix())) as [number, string | null] | null;
    if (!found) return undefined;
    const raw = found[1];
    // Operation records hold no secrets, so they are stored unsealed.
    return { operation: typeof raw === 'string' ? (JSON.parse(raw) as OperationRecord) : undefined };
  }

  private operationPrefix(): string {
    return `${this.key('operation')}:`;
  }

  /** Before a resource record is written: the operation it no longer points to, or its last one when deleted, starts to expire. */
  private async retireReplaced(resourceKey: string, latestOperationId: string, deleted: boolean): Promise<void> {
    await this.redis.eval(RETIRE_REPLACED, 1, resourceKey, this.tombstoneSeconds, this.operationPrefix(), latestOperationId, deleted ? '1' : '0');
  }

  /** After a finished operation is written: kept while it is the latest of its live resource, else the tombstone time. */
  private async settleFinished(record: OperationRecord): Promise<void> {
    const resource = record.bindingId === undefined ? this.key('instance', record.instanceId) : this.key('binding', record.instanceId, record.bindingId);
    await this.redis.eval(SETTLE_FINISHED, 2, this.key('operation', record.id), resource, record.id, this.tombstoneSeconds);
  }

  async putOperation(record: OperationRecord): Promise<void> {
    const key = this.key('operation', record.id);
    // The set of active operations changes with the record: sweepers find unfinished work there, whoever started it.
    if (record.state === 'in progress') await this.redis.multi().set(key, this.write(key, record)).sadd(this.key('operations', 'active'), record.id).exec();
    else
      await this.redis.multi().set(key, this.write(key, record), 'EX', FINISHED_OPERATION_TTL_SECONDS).srem(this.key('operations', 'active'), record.id).exec();
    if (record.state !== 'in progress') await this.settleFinished(record);
  }

  /** Ids of the operations in progress, whoever runs them. */
  async activeOperationIds(): Promise<string[]> {
    return this.redis.smembers(this.key('operations', 'active'));
  }

  /** Lists an id as active without touching its record; the sweep reads the record before it acts. */
  async rememberActiveOperation(id: string): Promise<void> {
    await this.redis.sadd(this.key('operations', 'active'), id);
  }

  /** Forgets an id in the active set whose record is gone or finished. */
  async forgetActiveOperation(id: string): Promise<void> {
    await this.redis.srem(this.key('operations', 'active'), id);
  }

  // Leases: who runs an operation right now. A lease lives while its holder renews it; a lapsed one is free to take.

  /** Takes the lease when nobody holds it, or renews it when `owner` does. */
  async claimLease(operationId: string, owner: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.eval(CLAIM_LEASE, 1, this.key('lease', operationId), owner, ttlMs)) === 1;
  }

  async releaseLease(operationId: string, owner: string): Promise<void> {
    await this.redis.eval(RELEASE_IF_OWNER, 1, this.key('lease', operationId), owner);
  }

  /** Whether anybody holds the operation's lease. */
  async leaseHeld(operationId: string): Promise<boolean> {
    return (await this.redis.exists(this.key('lease', operationId))) === 1;
  }

  // Host ports

  /** Reserves the first port of the range that nobody holds in Redis and for which `usable` says yes. */
  async reservePort(
    instanceId: string,
    range: { first: number; last: number },
    usable: (port: number) => Promise<boolean>,
    scope?: string,
  ): Promise<number | undefined> {
    for (let port = range.first; port <= range.last; port++) {
      const key = this.portKey(port, scope);
      if ((await this.redis.exists(key)) || !(await usable(port))) continue;
      // The port and the instance's index of its ports change together, so no crash can leave one without the other.
      if (await this.redis.eval(RESERVE_PORT, 2, key, this.key('ports', instanceId), instanceId, portMember(port, scope))) return port;
    }
    return undefined;
  }

  async releasePort(port: number, instanceId: string, scope?: string): Promise<void> {
    await this.redis.eval(RELEASE_PORT, 2, this.portKey(port, scope), this.key('ports', instanceId), instanceId, portMember(port, scope));
  }

  /** Releases every port the instance holds, including any a crash left reserved but unrecorded. */
  async releasePortsOf(instanceId: string): Promise<void> {
    for (const member of await this.redis.smembers(this.key('ports', instanceId))) {
      const { port, scope } = parsePortMember(member);
      await this.releasePort(port, instanceId, scope);
    }
  }

  async listPortReservations(): Promise<PortReservation[]> {
    const prefix = `${this.key('port')}:`;
    const keys = await this.scan(`${prefix}*`);
    const holders = keys.length ? await this.redis.mget(...keys) : [];
    const reservations: PortReservation[] = [];
    keys.forEach((key, index) => {
      const holder = holders[index];
      // port:<port> on a single engine, port:<node>:<port> per Swarm node.
      const parts = key.slice(prefix.length).split(':');
      const port = Number(parts.at(-1));
      if (holder && port) reservations.push({ port, scope: parts.length > 1 ? parts[0] : undefined, holder });
    });
    return reservations;
  }

  private portKey(port: number, scope?: string): string {
    return scope ? this.key('port', scope, String(port)) : this.key('port', String(port));
  }

  // Locks

  /** Runs `work` while holding the named lock; waits for it up to `waitMs`. */
  async withLock<T>(name: string, work: () => Promise<T>, waitMs = 15_000): Promise<T> {
    const key = this.key('lock', name);
    const token = randomBytes(16).toString('hex');
    await waitFor(async () => ((await this.redis.set(key, token, 'PX', LOCK_TTL_MS, 'NX')) === 'OK' ? true : undefined), {
      intervalMs: 15,
      timeoutMs: waitMs,
      onTimeout: () => new LockTimeoutError(`lock ${name} is busy`),
    }).catch((error: unknown) => {
      // A hung Redis may still take the lock once it wakes up: give it back then rather than let it lapse.
      if (error instanceof StoreUnavailableError) this.redis.eval(RELEASE_IF_OWNER, 1, key, token).catch(() => {});
      throw error;
    });
    // Renewed while held, so slow work (a long bind script) never outlives its lock.
    const renewal = setInterval(() => {
      this.redis.eval(EXTEND_IF_OWNER, 1, key, token, LOCK_TTL_MS).catch(() => {});
    }, LOCK_TTL_MS / 3);
    try {
      return await work();
    } finally {
      clearInterval(renewal);
      // Work done while Redis went away is still done: the lock then lapses on its own.
      await this.redis.eval(RELEASE_IF_OWNER, 1, key, token).catch((error: Error) => {
        if (!(error instanceof StoreUnavailableError)) throw error;
      });
    }
  }

  private async scan(pattern: string): Promise<string[]> {
    const found: string[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
      cursor = next;
      found.push(...keys);
    } while (cursor !== '0');
    return found;
  }

  // Sealing

  /** Records without secrets (operations) are written as they are; only a `secrets` field is sealed. */
  private write(key: string, record: object): string {
    const { secrets, ...rest } = record as { secrets?: unknown };
    return JSON.stringify(secrets === undefined ? rest : { ...rest, sealed: this.sealer.seal(secrets, key) });
  }

  private async read<T>(key: string): Promise<T | undefined> {
    const raw = await this.redis.get(key);
    if (raw === null) return undefined;
    const { sealed, ...rest } = JSON.parse(raw) as { sealed?: string };
    return (sealed === undefined ? rest : { ...rest, secrets: this.sealer.open<unknown>(sealed, key) }) as T;
  }
}

/** The member of an instance's port index: "<port>" on a single engine, "<node>/<port>" per Swarm node. */
function portMember(port: number, scope?: string): string {
  return scope ? `${scope}/${port}` : String(port);
}

function parsePortMember(member: string): { port: number; scope?: string } {
  const slash = member.lastIndexOf('/');
  return slash < 0 ? { port: Number(member) } : { port: Number(member.slice(slash + 1)), scope: member.slice(0, slash) };
}
