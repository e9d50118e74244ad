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
  /** "<port>", or "<node>/<port>" per Swarm node, to the instance holding it. */
  readonly ports = new Map<string, string>();
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
  async reservePort(instanceId: string, range: { first: number; last: number }, usable: (port: number) => Promise<boolean>, scope?: string) {
    for (let port = range.first; port <= range.last; port++) {
      const slot = scope ? `${scope}/${port}` : String(port);
      if (this.ports.has(slot) || !(await usable(port))) continue;
      this.ports.set(slot, instanceId);
      return port;
    }
    return undefined;
  }
  async releasePort(port: number, instanceId: string, scope?: string) {
    const slot = scope ? `${scope}/${port}` : String(port);
    if (this.ports.get(slot) === instanceId) this.ports.delete(slot);
  }
  async releasePortsOf(instanceId: string) {
    for (const [slot, holder] of [...this.ports]) if (holder === instanceId) this.ports.delete(slot);
  }
  async listPortReservations() {
    return [...this.ports].map(([slot, holder]) => {
      const [scope, port] = slot.includes('/') ? slot.split('/') : [undefined, slot];
      return { port: Number(port), scope, holder };
    });
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
