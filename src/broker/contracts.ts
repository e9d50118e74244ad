import type { Readable } from 'node:stream';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { ContainerSummary } from '../docker/types.js';
import type { ContainerTarget } from './scripts.js';
import type { PlacementNode } from './placement.js';
import type { BackupRecord, BindingRecord, HealthRecord, InstanceRecord, OperationRecord, OperationType, PortReservation } from '../store/records.js';

/**
 * What the lifecycle needs from its two outside parts, in its own terms. The Redis store and the Docker runtime
 * implement these; tests of the status-code and concurrency rules use in-memory fakes.
 */
export interface StateStore {
  getInstance(id: string): Promise<InstanceRecord | undefined>;
  putInstance(record: InstanceRecord): Promise<void>;
  listInstances(): Promise<InstanceRecord[]>;

  getBinding(instanceId: string, bindingId: string): Promise<BindingRecord | undefined>;
  putBinding(record: BindingRecord): Promise<void>;
  listBindings(instanceId: string): Promise<BindingRecord[]>;
  /** Removes every binding record of an instance, tombstones included. */
  deleteBindingsOf(instanceId: string): Promise<void>;

  getOperation(id: string): Promise<OperationRecord | undefined>;
  /**
   * The latest operation of an instance, or of one of its bindings, in one round trip (platforms poll it):
   * undefined when the instance or binding has no record; `operation` undefined when the operation's record is gone.
   */
  latestOperation(instanceId: string, bindingId?: string): Promise<{ operation?: OperationRecord } | undefined>;
  /** Records an operation; one in progress is listed as active until a finished record replaces it. */
  putOperation(record: OperationRecord): Promise<void>;
  activeOperationIds(): Promise<string[]>;
  forgetActiveOperation(id: string): Promise<void>;
  /** Lists an operation as active without touching its record (records from before leases existed). */
  rememberActiveOperation(id: string): Promise<void>;

  /** Takes an operation's lease when nobody holds it, or renews it when `owner` does; false when another holds it. */
  claimLease(operationId: string, owner: string, ttlMs: number): Promise<boolean>;
  releaseLease(operationId: string, owner: string): Promise<void>;
  leaseHeld(operationId: string): Promise<boolean>;

  /**
   * Reserves the first port of the range nobody holds and `usable` accepts; undefined when none is left. Ports are
   * reserved per scope (a Swarm node's id), so two nodes may use the same number; no scope is the single engine.
   */
  reservePort(
    instanceId: string,
    range: { first: number; last: number },
    usable: (port: number) => Promise<boolean>,
    scope?: string,
  ): Promise<number | undefined>;
  releasePort(port: number, instanceId: string, scope?: string): Promise<void>;
  releasePortsOf(instanceId: string): Promise<void>;
  listPortReservations(): Promise<PortReservation[]>;

  /** Runs `work` holding the named lock; throws LockTimeoutError after waiting `waitMs` for it. */
  withLock<T>(name: string, work: () => Promise<T>, waitMs?: number): Promise<T>;

  /** What the engine really runs for a ready instance (the reconciler's record); removed with the instance. */
  getHealth(instanceId: string): Promise<HealthRecord | undefined>;
  putHealth(instanceId: string, record: HealthRecord): Promise<void>;
}

export type Progress = (description: string) => Promise<void>;

/** Containers, volumes and the scripts inside an offering's image. */
export interface InstanceRuntime {
  /** Creates and starts the instance and returns once it accepts a login through its published port. */
  start(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void>;
  /** Replaces the container (new image or settings) keeping volume and ports. */
  recreate(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void>;
  /** Removes container and volume; either may already be gone. */
  destroy(instance: InstanceRecord): Promise<void>;
  inspect(instance: Omit<InstanceRecord, 'secrets'>): Promise<ContainerSummary | undefined>;
  applyLimits(definition: ServiceDefinition, instance: InstanceRecord, planId: string): Promise<void>;
  configure(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void>;
  /** Creates the binding's user; returns extra credential fields. */
  bind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<Record<string, string | number>>;
  unbind(definition: ServiceDefinition, instance: InstanceRecord, binding: BindingRecord, signal: AbortSignal): Promise<void>;
}

/**
 * Where an instance's container runs, for the dashboard's live views and the scripts: the local engine, or on
 * Swarm the engine of the instance's node. Neither needs the instance's secrets.
 */
export interface InstanceContainers {
  /** The container's state as the platform should see it (on Swarm: the service's task, and whether its node is up). */
  inspect(instance: Omit<InstanceRecord, 'secrets'>): Promise<ContainerSummary | undefined>;
  /** The engine and container id to exec in, read logs of, and so on; throws when the container cannot be reached. */
  locate(instance: Omit<InstanceRecord, 'secrets'>): Promise<ContainerTarget>;
}

/** A container (a service, on Swarm) or volume carrying this broker's instance labels. */
export interface InventoryObject {
  name: string;
  instanceId?: string;
  /** The Swarm node a volume is on. */
  node?: string;
}

/** What start-up recovery needs to find and remove what no instance owns, on every node. */
export interface EngineInventory {
  /** The broker's instance containers (services on Swarm) and volumes; `unreachable` names nodes that could not be asked. */
  inventory(): Promise<{ workloads: InventoryObject[]; volumes: InventoryObject[]; unreachable: string[] }>;
  removeWorkload(object: InventoryObject): Promise<void>;
  removeVolume(object: InventoryObject): Promise<void>;
}

/** A runtime that spreads instances over nodes (Swarm): the nodes a new instance may go to, with their addresses. */
export interface Placement {
  candidates(): Promise<PlacementNode[]>;
}

/** What backups need of a runtime: the offering's dump of an instance's data out, and back in. */
export interface DumpRuntime {
  /** Runs the backup script: its stdout is the dump. Read it to its end; `finished` rejects if the script failed. */
  backup(
    definition: ServiceDefinition,
    instance: InstanceRecord,
    options: { timeoutSeconds: number; signal: AbortSignal },
  ): Promise<{ stdout: Readable; finished: Promise<void> }>;
  /** Runs the restore script with the dump on its stdin; resolves once it loaded it. */
  restore(definition: ServiceDefinition, instance: InstanceRecord, dump: Readable, options: { timeoutSeconds: number; signal: AbortSignal }): Promise<void>;
}

/**
 * What an in-place restore needs besides dumps: the instance's container made again on another of its volumes (same
 * name, ports and settings), a readiness check, and a volume removed. The single engine has it; Swarm does not.
 */
export interface VolumeSwapRuntime {
  /** Replaces the container by one on `volumeName` (created when missing); returns once it accepts a login. */
  moveToVolume(definition: ServiceDefinition, instance: InstanceRecord, volumeName: string, signal: AbortSignal, progress: Progress): Promise<void>;
  /** Returns once the instance's service is ready and accepts a login (the offering's ready and check scripts). */
  checkReady(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal): Promise<void>;
  /** Removes one of the instance's volumes (not the one its container uses); a missing one is not an error. */
  removeInstanceVolume(instance: InstanceRecord, volumeName: string): Promise<void>;
}

export const swapsVolumes = <T extends object>(runtime: T): runtime is T & VolumeSwapRuntime => 'moveToVolume' in runtime;

/** A restart on request (POST …/restart): the single engine stops and starts the container; Swarm replaces the task. */
export interface RestartRuntime {
  /** Returns once the service accepts a login again; safe to run again after a takeover. */
  restartInstance(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void>;
}

export const restartsInstances = <T extends object>(runtime: T): runtime is T & RestartRuntime => 'restartInstance' in runtime;

/** A lifecycle event of one instance's container (die, stop, kill, oom, destroy, start). */
export interface InstanceEvent {
  instanceId: string;
  action: string;
}

/** What the reconciler needs to compare ready instances with the engine and bring them back. */
export interface DriftRuntime extends Pick<InstanceRuntime, 'start' | 'inspect'> {
  /** Starts the existing container again; returns once it accepts a login, as `start` does. */
  restart(definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress): Promise<void>;
  volumeExists(instance: InstanceRecord): Promise<boolean>;
  /**
   * Calls onEvent for every lifecycle event of this broker's instance containers until the signal aborts; the
   * engine connection is made again whenever it drops (onDisconnect says why).
   */
  watch(onEvent: (event: InstanceEvent) => void, signal: AbortSignal, onDisconnect: (reason: string) => void): Promise<void>;
}

/** A host port the runtime found taken by something outside the broker; the provision picks another. */
export class PortTakenError extends Error {}

/** Free-port check on the publishing address (of the instance's node, on Swarm), before a port is reserved. */
export type PortProbe = (port: number, instance: InstanceRecord) => Promise<boolean>;

/** How an operation ended, as the operation runner reports it to observers. */
export type OperationOutcome = 'succeeded' | 'failed';

/**
 * Told by the operation runner about each operation it runs (the metrics implement it). Calls are synchronous and
 * must not throw; `noOperationObserver` ignores them.
 */
export interface OperationObserver {
  /** The runner began the work of an operation of this type. */
  operationStarted(type: OperationType): void;
  /** The operation ended; `seconds` from its start to its finished record. */
  operationFinished(type: OperationType, outcome: OperationOutcome, seconds: number): void;
  /** The runner took over an operation whose lease lapsed (its holder stopped renewing it). */
  leaseTakenOver(type: OperationType): void;
}

/** Told of each backup this process ends, and of each scheduled run that could not start (failed); must not throw. */
export interface BackupObserver {
  backupEnded(backup: Pick<BackupRecord, 'instanceId' | 'serviceId' | 'origin' | 'state' | 'finishedAt'>): void;
}

export const noOperationObserver: OperationObserver = {
  operationStarted: () => {},
  operationFinished: () => {},
  leaseTakenOver: () => {},
};
