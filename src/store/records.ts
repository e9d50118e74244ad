import type { OperationState } from '../osb/types.js';

export type InstanceState = 'provisioning' | 'ready' | 'failed' | 'deprovisioning' | 'deleted';
export type BindingState = 'creating' | 'ready' | 'failed' | 'deleting' | 'deleted';
export type OperationType = 'provision' | 'update' | 'deprovision' | 'bind' | 'unbind' | 'restore' | 'restart' | 'tls-renewal';

export interface InstanceRecord {
  id: string;
  serviceId: string;
  planId: string;
  organizationGuid: string;
  spaceGuid: string;
  context: Record<string, unknown>;
  /** As the platform sent them, to tell a repeated request from a conflicting one. */
  requestedParameters: Record<string, unknown>;
  /** With the schema's defaults filled in: what the engine runs with. */
  parameters: Record<string, unknown>;
  maintenanceVersion: string;
  state: InstanceState;
  containerName: string;
  volumeName: string;
  /** The main published port, and the offering's extra ones by name; reserved in Redis for the instance's life. */
  hostPort?: number;
  extraHostPorts?: Record<string, number>;
  /** On Swarm: the node the instance is placed on (its volume lives there), and the address clients use to reach it. */
  node?: string;
  advertisedHost?: string;
  /** The backup a new instance starts from (provision parameter restore_from): loaded once its service runs. */
  restoreFrom?: { instanceId: string; backupId: string };
  /** Provision or update parameter backup_schedule: a cron expression, or "off"; absent: the broker's default schedule. */
  backupSchedule?: string;
  /** The live instance a new one is a copy of (provision parameter clone_of): backed up, then restored into it. */
  cloneOf?: string;
  createdAt: string;
  updatedAt: string;
  lastOperationId: string;
  /**
   * Sealed (AES-256-GCM) in Redis. `dashboardLink`: the secret of the instance's lifelong dashboard link (absent on
   * instances made before such links, until their next update or rotation).
   */
  secrets: { adminPassword: string; dashboardLink?: string };
}

export interface BindingRecord {
  id: string;
  instanceId: string;
  serviceId: string;
  planId: string;
  appGuid?: string;
  bindResource?: Record<string, unknown>;
  /** The platform's context (opaque; `binding_name` is shown in listings when a client sends one). */
  context?: Record<string, unknown>;
  parameters: Record<string, unknown>;
  /** A rotation's successor: the binding it succeeds (which keeps working until it is unbound). */
  predecessorBindingId?: string;
  state: BindingState;
  username: string;
  createdAt: string;
  lastOperationId: string;
  /** Sealed (AES-256-GCM) in Redis: the password and whatever else the bind script returned. */
  secrets: { password: string; extra: Record<string, string | number> };
}

/** What an update asked for, kept with its operation to recognise the same request again. */
export interface UpdateTarget {
  planId: string;
  parameters: Record<string, unknown>;
  requestedParameters: Record<string, unknown>;
  maintenanceVersion: string;
}

export interface OperationRecord {
  id: string;
  type: OperationType;
  instanceId: string;
  bindingId?: string;
  state: OperationState;
  description: string;
  createdAt: string;
  finishedAt?: string;
  update?: UpdateTarget;
  /** A deprovision's: the provision it cancelled, which it waits for, wherever that runs. */
  supersedes?: string;
  /** An in-place restore's: what it loads, and the volumes it swaps between (see in-place-restore.ts). */
  restore?: InPlaceRestorePlan;
  instanceUsable?: boolean;
  updateRepeatable?: boolean;
}

/**
 * An in-place restore: the backup, the volume the instance ran on (`previousVolume`) and the fresh one the backup is
 * loaded into. `swapping` is recorded before the container is first touched, so a process that continues the
 * operation knows whether anything must be put back.
 */
export interface InPlaceRestorePlan {
  source: { instanceId: string; backupId: string };
  previousVolume: string;
  freshVolume: string;
  swapping?: boolean;
}

/**
 * Why a ready instance was not running: its container `stopped` (exited, dead, never started), is `restarting` (the
 * engine's restart policy is at it), `paused`, being removed (`removing`) or `removed` (its volume kept), its data
 * volume is missing (`volume-missing`), it cannot be made again because the catalog moved to another version
 * (`version-gone`), or its Swarm node is down or unreachable (`node-down`; it comes back with the node).
 */
export type DriftCause = 'stopped' | 'restarting' | 'paused' | 'removing' | 'removed' | 'volume-missing' | 'version-gone' | 'node-down';

/**
 * What the engine really runs for a ready instance, kept by the reconciler (no record: nothing went wrong yet).
 * `since`: when it went down (or, for `running`, when it ran again); `reason` in words an operator understands.
 */
export interface HealthRecord {
  state: 'running' | 'down' | 'repaired';
  since: string;
  reason?: string;
  /** What kind of drift it was; the broker repairs `stopped` and `removed` itself. */
  cause?: DriftCause;
  /** For `repaired`: when the broker had it running again, and how. */
  repairedAt?: string;
  repair?: 'restarted' | 'recreated';
}

/** An instance's last engine stats reading (its offering's scripts/stats): the numbers, or why there are none. */
export interface EngineStatsRecord {
  /** When the script ran. */
  at: string;
  /** After this the reading is stale: the collection stopped, and /metrics leaves it out. */
  expiresAt: string;
  values?: Record<string, number>;
  error?: string;
}

/** One reserved host port: its number, its scope (a Swarm node; none on a single engine) and the instance holding it. */
export interface PortReservation {
  port: number;
  scope?: string;
  holder: string;
}

/**
 * One backup of an instance: the dump of its offering's backup script, sealed (compressed, encrypted) in the backup
 * store under `storeKey`. Kept after the instance is deleted (with the instance's organization, space and offering,
 * so a restore can be authorised then), until retention removes it.
 */
export interface BackupRecord {
  id: string;
  instanceId: string;
  state: 'in progress' | 'succeeded' | 'failed';
  serviceId: string;
  planId: string;
  organizationGuid: string;
  spaceGuid: string;
  /** The instance's maintenance version (engine version) when the backup was made. */
  maintenanceVersion: string;
  storeKey: string;
  createdAt: string;
  finishedAt?: string;
  /** For a failure: why, in words an operator understands (no secret). */
  description?: string;
  /** Bytes of the dump, and of the sealed object in the store. */
  plainBytes?: number;
  storedBytes?: number;
  /** SHA-256 (hex) of the stored object. */
  sha256?: string;
  /** The process making it (lease holder), while in progress. */
  owner?: string;
  /** How it came to be: on demand (`manual`, also the backup a clone_of takes), by the schedule, or uploaded (`import`). */
  origin?: BackupOrigin;
}

export type BackupOrigin = 'manual' | 'scheduled' | 'import';

/**
 * Where an instance's backup schedule stands, across replicas: the run time (epoch ms) of the last scheduled run a
 * replica claimed, with the expression it was claimed under, and the last scheduled run that could not even start.
 */
export interface BackupScheduleMark {
  cron: string;
  lastRunMs: number;
  failure?: { at: string; description: string };
}
