/**
 * The broker's own API beyond OSB (GET /broker/v1/instances), as the HTTP layer sends it and the CLI reads it.
 * No secrets travel here.
 */
export interface ListedBinding {
  id: string;
  /** The platform context's binding_name, when a client sent one. */
  name?: string;
  state: string;
  created_at: string;
  /** A rotation's successor: the binding it succeeds (OSB 2.17 predecessor_binding_id). */
  predecessor_id?: string;
}

/** What the engine really runs for a ready instance, once the broker found it down at least once. */
export interface ListedHealth {
  /** `repaired`: it was down and the broker brought it back; it runs again. */
  state: 'running' | 'down' | 'repaired';
  /** When it went down (for `running`: when it ran again); UTC, to the second. */
  since: string;
  reason?: string;
  /** stopped, restarting, paused, removing, removed, volume-missing or version-gone. */
  cause?: string;
  repaired_at?: string;
  /** One line for people, e.g. "down since …: container exited with code 137 (killed); restarted by the broker at …". */
  summary: string;
}

export interface ListedContainer {
  /** running, exited, restarting, paused, created, unreachable (Swarm: its node is down) or missing. */
  state: string;
  /** Of a container that is not running. */
  exit_code?: number;
}

export interface ListedInstance {
  id: string;
  /** The platform context's instance_name, when a client sent one. */
  name?: string;
  service_id: string;
  service_name: string;
  plan_id: string;
  plan_name: string;
  state: string;
  last_operation?: { type: string; state: string; description: string };
  /** Only for a ready instance the broker has found down at least once; absent means it ran whenever it looked. */
  health?: ListedHealth;
  /** The engine's state of a ready instance's container, read when listed (absent for other states). */
  container?: ListedContainer;
  /** host:port of the main published port, where clients connect; absent before a port is reserved. */
  endpoint?: string;
  dashboard_url: string;
  created_at: string;
  bindings: ListedBinding[];
  /** The data volume as last measured (every BROKER_USAGE_DISK_SECONDS); absent before the first measure. */
  disk?: ListedDisk;
}

/**
 * Bytes an instance's data volume takes against its plan's disk_mb. A soft limit: Docker's local volumes have no
 * quota, so `over` reports it and nothing stops the writes.
 */
export interface ListedDisk {
  used_bytes: number;
  /** Absent when the plan sets no disk_mb. */
  limit_bytes?: number;
  over: boolean;
  measured_at: string;
}

export interface InstanceListing {
  instances: ListedInstance[];
}
