import type { ListedInstance } from '../api/listing.js';
import type { ServiceDefinition } from '../catalog/definition.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type {
  BindRequest,
  BindResult,
  BindingView,
  DeprovisionResult,
  InstanceView,
  LastOperation,
  ProvisionRequest,
  ProvisionResult,
  RequestMeta,
  ResourceQuery,
  ServiceBroker,
  ServiceOffering,
  UnbindResult,
  UpdateRequest,
  UpdateResult,
} from '../osb/types.js';
import type { InstanceRecord, OperationRecord, OperationType } from '../store/records.js';
import { BindingLifecycle } from './bindings.js';
import type { InstanceRuntime, OperationObserver, Placement, PortProbe, StateStore } from './contracts.js';
import type { BackupService } from './backups.js';
import { InPlaceRestore } from './in-place-restore.js';
import { rotateDashboardLink, type LinkedInstance } from './dashboard-link.js';
import { InstanceLifecycle } from './instances.js';
import { InstanceRestart } from './restart.js';
import { TlsRenewals, type CertificateRenewer } from './tls-renewal.js';
import { listInstances, type LiveState } from './listing.js';
import { Offerings } from './offerings.js';
import { OperationRunner, type RunnerSettings, type Work } from './operations.js';

export interface BrokerParts {
  config: Pick<Config, 'brokerId' | 'portRange' | 'advertisedHost'>;
  definitions: ServiceDefinition[];
  store: StateStore;
  runtime: InstanceRuntime;
  log: Logger;
  /** Whether nothing on this host listens on a port, before it is reserved. */
  portIsFree: PortProbe;
  /** The dashboard URL the platform keeps for the instance (src/dashboard/links.ts). */
  dashboardUrl: (instance: LinkedInstance) => string;
  leases: RunnerSettings;
  observer?: OperationObserver;
  /** On Swarm: where new instances may go. */
  placement?: Placement;
  /** Backups: on demand through the broker API, and restore_from at provision. */
  backups?: BackupService;
  /** The broker's CA for the credentials of TLS offerings (ca_certificate), and their renewal; without it they carry none. */
  tls?: { caCertificate(): string } & Partial<CertificateRenewer>;
}

/** The ServiceBroker the HTTP adapter serves: OSB semantics on top of the store (state) and the runtime (containers). */
export class DockerBroker implements ServiceBroker {
  readonly offerings: Offerings;
  readonly runner: OperationRunner;
  readonly dashboardUrl: (instance: LinkedInstance) => string;
  /** Restores into running instances (POST /broker/v1/instances/:id/restore); only with backups. */
  readonly restores?: InPlaceRestore;
  /** Restarts on request (POST /broker/v1/instances/:id/restart, and the dashboard's button). */
  readonly restarts: InstanceRestart;
  /** Certificate renewals, as instance operations; only with TLS delivery. */
  readonly tlsRenewals?: TlsRenewals;
  private readonly store: StateStore;
  /** For the listing: where clients reach published ports (unless an instance's record says), and the engine's state. */
  private readonly live: LiveState;
  private readonly log: Logger;
  private readonly instances: InstanceLifecycle;
  private readonly bindings: BindingLifecycle;

  constructor({ config, definitions, store, runtime, log, portIsFree, dashboardUrl, leases, observer, placement, backups, tls }: BrokerParts) {
    this.store = store;
    this.log = log;
    this.dashboardUrl = dashboardUrl;
    this.offerings = new Offerings(definitions);
    this.runner = new OperationRunner(store, log, leases, observer);
    const parts = { config, offerings: this.offerings, store, runtime, runner: this.runner, log, portIsFree, dashboardUrl, placement, backups, tls };
    this.live = { advertisedHost: config.advertisedHost, runtime };
    this.instances = new InstanceLifecycle(parts);
    this.bindings = new BindingLifecycle(parts);
    if (backups) this.restores = new InPlaceRestore({ ...parts, backups });
    this.restarts = new InstanceRestart(parts);
    if (tls?.renew) this.tlsRenewals = new TlsRenewals({ ...parts, renewer: { renew: tls.renew.bind(tls) } });
    this.runner.continueWith((operation) => this.workFor(operation));
  }

  catalog(): ServiceOffering[] {
    return this.offerings.offerings();
  }

  provision(instanceId: string, request: ProvisionRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<ProvisionResult> {
    return this.instances.provision(instanceId, request, asyncAllowed, meta);
  }

  fetchInstance(instanceId: string, query: ResourceQuery): Promise<InstanceView> {
    return this.instances.fetch(instanceId, query);
  }

  update(instanceId: string, request: UpdateRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<UpdateResult> {
    return this.instances.update(instanceId, request, asyncAllowed, meta);
  }

  deprovision(instanceId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<DeprovisionResult> {
    return this.instances.deprovision(instanceId, query, asyncAllowed, meta);
  }

  lastInstanceOperation(instanceId: string, query: ResourceQuery): Promise<LastOperation> {
    return this.instances.lastOperation(instanceId, query);
  }

  bind(instanceId: string, bindingId: string, request: BindRequest, asyncAllowed: boolean, meta: RequestMeta): Promise<BindResult> {
    return this.bindings.bind(instanceId, bindingId, request, asyncAllowed, meta);
  }

  fetchBinding(instanceId: string, bindingId: string, query: ResourceQuery): Promise<BindingView> {
    return this.bindings.fetch(instanceId, bindingId, query);
  }

  unbind(instanceId: string, bindingId: string, query: ResourceQuery, asyncAllowed: boolean, meta: RequestMeta): Promise<UnbindResult> {
    return this.bindings.unbind(instanceId, bindingId, query, asyncAllowed, meta);
  }

  lastBindingOperation(instanceId: string, bindingId: string, query: ResourceQuery): Promise<LastOperation> {
    return this.bindings.lastOperation(instanceId, bindingId, query);
  }

  /** Every live instance with its bindings, for clients that work with names rather than ids. No secrets. */
  listing(): Promise<ListedInstance[]> {
    return listInstances(this.store, this.offerings, this.dashboardUrl, this.live);
  }

  /** A new lifelong dashboard link for the instance (the old one stops working); the record with its new secret. */
  rotateDashboardLink(instanceId: string): Promise<InstanceRecord> {
    return rotateDashboardLink(this.store, instanceId);
  }

  /** Starts looking for operations nobody holds (a dead process's, or ones left by an outage) and continues them. */
  startSweeping(): void {
    this.runner.startSweeping();
  }

  /** How to continue an operation of each kind; every step is idempotent. */
  private workFor(operation: OperationRecord): Work {
    const work: Record<OperationType, Work> = {
      provision: (signal) => this.instances.runProvision(operation, signal),
      update: (signal) => this.instances.runUpdate(operation, signal),
      deprovision: (signal) => this.instances.runDeprovision(operation, signal),
      bind: (signal) => this.bindings.runBind(operation, signal),
      unbind: (signal) => this.bindings.runUnbind(operation, signal),
      restore: (signal) =>
        this.restores ? this.restores.run(operation, signal) : this.runner.finish(operation, 'failed', 'Restore failed: this broker has no backups.'),
      restart: (signal) => this.restarts.run(operation, signal),
      'tls-renewal': (signal) =>
        this.tlsRenewals ? this.tlsRenewals.run(operation, signal) : this.runner.finish(operation, 'failed', 'TLS renewal failed: this broker has no TLS.'),
    };
    return work[operation.type];
  }

  /** Shutdown: background operations are handed back for another process (or the next start) to continue. */
  handBack(): Promise<void> {
    return this.runner.handBack();
  }

  /** Waits for every running operation; used at shutdown and by tests. */
  settle(): Promise<void> {
    return this.runner.settle();
  }
}
