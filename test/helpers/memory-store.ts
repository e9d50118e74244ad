import { randomBytes } from 'node:crypto';
import type { StateStore } from '../../src/broker/contracts.js';
import { LockTimeoutError } from '../../src/store/errors.js';
import type { BindingRecord, HealthRecord, InstanceRecord, OperationRecord } from '../../src/store/records.js';
import { waitFor } from '../../src/wait.js';

const copy = <T>(value: T): T => structuredClone(value);

/** The StateStore in memory, for fast tests of the lifecycle rules; the Redis store has its own tests against Redis. */
export class MemoryStore implements StateStore {
  readonly instances = new Map<string, InstanceRecord>();
  readonly bindings = new Map<string, BindingRecord>();
  readonly operations = new Map<string, OperationRecord>();
  readonly ports = new Map<number, string>();
  readonly active = new Set<string>();
  private readonly locks = new Map<string, string>();
  readonly health = new Map<string, HealthRecord>();
  async getHealth(instanceId: string) {
    const record = this.health.get(instanceId);
    return record && copy(record);
  }
  async putHealth(instanceId: string, record: HealthRecord) {
    this.health.set(instanceId, copy(record));
  }

  async getInstance(id: string) {
    const record = this.instances.get(id);
    return record && copy(record);
  }
  async putInstance(record: InstanceRecord) {
    this.instances.set(record.id, copy(record));
    if (record.state === 'deleted') this.health.delete(record.id);
  }
  async listInstances() {
    return [...this.instances.values()].filter((record) => record.state !== 'deleted').map(copy);
  }
  async getBinding(instanceId: string, bindingId: string) {
    const record = this.bindings.get(`${instanceId}/${bindingId}`);
    return record && copy(record);
  }
  async putBinding(record: BindingRecord) {
    this.bindings.set(`${record.instanceId}/${record.id}`, copy(record));
  }
  async listBindings(instanceId: string) {
    return [...this.bindings.values()].filter((record) => record.instanceId === instanceId && record.state !== 'deleted').map(copy);
  }
  async deleteBindingsOf(instanceId: string) {
    for (const key of [...this.bindings.keys()]) if (key.startsWith(`${instanceId}/`)) this.bindings.delete(key);
  }
  async getOperation(id: string) {
    const record = this.operations.get(id);
    return record && copy(record);
  }
  async latestOperation(instanceId: string, bindingId?: string) {
    const resource = bindingId === undefined ? this.instances.get(instanceId) : this.bindings.get(`${instanceId}/${bindingId}`);
    if (!resource) return undefined;
    const operation = this.operations.get(resource.lastOperationId);
    return { operation: operation && copy(operation) };
  }
  async putOperation(record: OperationRecord) {
    this.operations.set(record.id, copy(record));
    if (record.state === 'in progress') this.active.add(record.id);
    else this.active.delete(record.id);
  }
  async activeOperationIds() {
    return [...this.active];
  }
  async rememberActiveOperation(id: string) {
    this.active.add(id);
  }
  async forgetActiveOperation(id: string) {
    this.active.delete(id);
  }
  /** Leases with their expiry (ms since the epoch). */
  readonly leases = new Map<string, { owner: string; until: number }>();
  async claimLease(operationId: string, owner: string, ttlMs: number) {
    const lease = this.leases.get(operationId);
    if (lease && lease.owner !== owner && lease.until > Date.now()) return false;
    this.leases.set(operationId, { owner, until: Date.now() + ttlMs });
    return true;
  }
  async releaseLease(operationId: string, owner: string) {
    if (this.leases.get(operationId)?.owner === owner) this.leases.delete(operationId);
  }
  async leaseHeld(operationId: string) {
    return (this.leases.get(operationId)?.until ?? 0) > Date.now();
  }
  async reservePort(instanceId: string, range: { first: number; last: number }, usable: (port: number) => Promise<boolean>) {
    for (let port = range.first; port <= range.last; port++) {
      if (this.ports.has(port) || !(await usable(port))) continue;
      this.ports.set(port, instanceId);
      return port;
    }
    return undefined;
  }
  async releasePort(port: number, instanceId: string) {
    if (this.ports.get(port) === instanceId) this.ports.delete(port);
  }
  async releasePortsOf(instanceId: string) {
    for (const [port, holder] of [...this.ports]) if (holder === instanceId) this.ports.delete(port);
  }
  async listPortReservations() {
    return new Map(this.ports);
  }
  async withLock<T>(name: string, work: () => Promise<T>, waitMs = 2_000): Promise<T> {
    const token = randomBytes(8).toString('hex');
    await waitFor(() => (this.locks.has(name) ? undefined : (this.locks.set(name, token), true)), {
      intervalMs: 2,
      timeoutMs: waitMs,
      onTimeout: () => new LockTimeoutError(`lock ${name} is busy`),
    });
    try {
      return await work();
    } finally {
      if (this.locks.get(name) === token) this.locks.delete(name);
    }
  }
}
