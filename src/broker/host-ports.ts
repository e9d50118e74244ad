import type { Config } from '../config.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { InstanceRecord, OperationRecord } from '../store/records.js';
import type { PortProbe, StateStore } from './contracts.js';
import { Cancelled, now } from './operations.js';

/**
 * Reserves the instance's main host port and one per extra port of its offering, and records them on the
 * instance. Reservations live in the store for the instance's life, so two instances never share a port (on Swarm:
 * per node, so two nodes may use the same number).
 */
export async function reserveHostPorts(
  store: StateStore,
  config: Pick<Config, 'portRange'>,
  portIsFree: PortProbe,
  definition: ServiceDefinition,
  instance: InstanceRecord,
  operation: OperationRecord,
): Promise<InstanceRecord> {
  if (instance.hostPort) return instance;
  // The record is the truth: whatever a killed broker reserved without recording it is given back first.
  await store.releasePortsOf(instance.id);
  const reserve = async () => {
    const port = await store.reservePort(instance.id, config.portRange, (candidate) => portIsFree(candidate, instance), instance.node);
    if (!port) {
      await store.releasePortsOf(instance.id);
      throw new Error(`no free host port left in BROKER_PORT_RANGE ${config.portRange.first}-${config.portRange.last}`);
    }
    return port;
  };
  const hostPort = await reserve();
  const extraHostPorts: Record<string, number> = {};
  for (const name of Object.keys(definition.container.extraPorts)) extraHostPorts[name] = await reserve();
  return store.withLock(
    instance.id,
    async () => {
      const current = await store.getInstance(instance.id);
      if (!current || current.lastOperationId !== operation.id) {
        await store.releasePortsOf(instance.id);
        throw new Cancelled('a deprovision took over this instance');
      }
      const updated = { ...current, hostPort, extraHostPorts, updatedAt: now() };
      await store.putInstance(updated);
      return updated;
    },
    60_000,
  );
}

/**
 * Reserves host ports for the extra ports an offering gained since the instance was made (a maintenance upgrade
 * that adds a TLS listener, say) and records them; the ports the instance has stay as they are.
 */
export async function reserveNewExtraPorts(
  store: StateStore,
  config: Pick<Config, 'portRange'>,
  portIsFree: PortProbe,
  definition: ServiceDefinition,
  instance: InstanceRecord,
  operation: OperationRecord,
): Promise<InstanceRecord> {
  const missing = Object.keys(definition.container.extraPorts).filter((name) => instance.extraHostPorts?.[name] === undefined);
  if (missing.length === 0) return instance;
  const added: Record<string, number> = {};
  for (const name of missing) {
    const port = await store.reservePort(instance.id, config.portRange, (candidate) => portIsFree(candidate, instance), instance.node);
    if (!port) {
      for (const taken of Object.values(added)) await store.releasePort(taken, instance.id, instance.node);
      throw new Error(`no free host port left in BROKER_PORT_RANGE ${config.portRange.first}-${config.portRange.last} for the new ${name} port`);
    }
    added[name] = port;
  }
  return store.withLock(
    instance.id,
    async () => {
      const current = await store.getInstance(instance.id);
      if (!current || current.lastOperationId !== operation.id) {
        for (const taken of Object.values(added)) await store.releasePort(taken, instance.id, instance.node);
        throw new Cancelled('another operation took over this instance');
      }
      const extraHostPorts = { ...current.extraHostPorts, ...added };
      await store.putInstance({ ...current, extraHostPorts, updatedAt: now() });
      return { ...instance, extraHostPorts };
    },
    60_000,
  );
}
