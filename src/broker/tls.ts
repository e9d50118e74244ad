import type { ServiceDefinition, TlsSpec } from '../catalog/definition.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { InstanceRecord } from '../store/records.js';
import { checkCa, createCa, issuedBy, issueServerCertificate, needsRenewal, type KeyPair, type StoredCertificate } from '../tls/certificates.js';
import type { Offerings } from './offerings.js';
import { reasonOf } from './operations.js';
import { PeriodicPass } from './periodic-pass.js';
import type { ContainerTarget } from './scripts.js';

/** What TLS keeps in the state store: one CA for every replica, one server certificate per instance (keys sealed). */
export interface TlsStore {
  getTlsCa(): Promise<{ cert: string; secrets: { key: string } } | undefined>;
  /** Writes the CA unless one is there already; false when another replica was first. */
  putTlsCaIfAbsent(ca: { cert: string; secrets: { key: string } }): Promise<boolean>;
  getInstanceTls(instanceId: string): Promise<StoredCertificate | undefined>;
  putInstanceTls(instanceId: string, record: StoredCertificate): Promise<void>;
  listInstances(): Promise<InstanceRecord[]>;
  claimLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
}

/** The TLS settings of the broker (src/config.ts). */
export type TlsConfig = Pick<Config, 'brokerId' | 'advertisedHost' | 'tlsCa' | 'tlsCertSeconds' | 'tlsRenewCheckSeconds'>;

/** Puts the files into an instance's container and has the engine read them again (the offering's reload-tls script). */
export interface TlsDelivery {
  /** Where the container runs; throws when it cannot be reached. */
  locate(instance: Omit<InstanceRecord, 'secrets'>): Promise<ContainerTarget>;
  /** Runs the offering's reload-tls script in the running container. */
  reloadTls(definition: ServiceDefinition, instance: InstanceRecord, target: ContainerTarget, signal: AbortSignal): Promise<void>;
}

/**
 * Where files cannot be put into a running container (Swarm: a task's secrets are fixed when it is made), a renewed
 * certificate reaches the engine by replacing its container with one that has the new files.
 */
export interface TlsReplacement {
  /** Returns once the new container accepts a login again. */
  replaceTls(definition: ServiceDefinition, instance: InstanceRecord, files: TlsFiles, signal: AbortSignal): Promise<void>;
}

/** One file of an offering's `tls.dir`, with the owner and mode the engine expects. */
export interface TlsFile {
  name: string;
  content: Buffer;
  mode: number;
  uid: number;
  gid: number;
}

/** The files of one certificate, for a runtime that hands them to its orchestrator. */
export interface TlsFiles {
  /** The certificate's serial: files of another serial are another certificate's. */
  serial: string;
  dir: string;
  files: TlsFile[];
}

/**
 * The host port that shows an instance's engine is up: the main one, or the TLS port where `require_tls` closes the
 * plain one (an engine whose TLS has a port of its own, `tls.port` naming an extra port: Redis, RabbitMQ, Mosquitto).
 */
export function probedHostPort(
  definition: Pick<ServiceDefinition, 'tls'>,
  instance: Pick<InstanceRecord, 'hostPort' | 'extraHostPorts' | 'parameters'>,
): number | undefined {
  const tlsPort = definition.tls && definition.tls.port !== 'main' ? instance.extraHostPorts?.[definition.tls.port] : undefined;
  return instance.parameters.require_tls === true && tlsPort !== undefined ? tlsPort : instance.hostPort;
}

/** The three files an offering's `tls.dir` receives. */
export const TLS_FILES = { ca: 'ca.pem', cert: 'cert.pem', key: 'key.pem' } as const;

/**
 * The broker's CA and the instances' server certificates: issued when an instance's container is made, delivered
 * into it before its first start (never through its metadata), renewed by a periodic pass that one replica runs.
 */
export class InstanceTls {
  private ca?: KeyPair;
  private renewals?: PeriodicPass;
  private readonly stopping = new AbortController();

  constructor(
    private readonly parts: {
      store: TlsStore;
      config: TlsConfig;
      offerings: Offerings;
      log: Logger;
      /** This process, as the holder of the renewal pass's lease. */
      owner: string;
      delivery?: TlsDelivery | TlsReplacement;
    },
  ) {}

  /**
   * Loads the CA: the operator's (BROKER_TLS_CA_CERT_FILE and _KEY_FILE), else the one in the store, else a new one
   * written there; when replicas start at once, the first write wins and the others read it back.
   */
  async start(now = new Date()): Promise<void> {
    const { store, config, log } = this.parts;
    if (config.tlsCa) {
      this.ca = checkCa(config.tlsCa, now);
      return;
    }
    let stored = await store.getTlsCa();
    if (!stored) {
      const made = await createCa(config.brokerId, now);
      if (await store.putTlsCaIfAbsent({ cert: made.cert, secrets: { key: made.key } })) log.info('made the broker CA for the instances’ TLS certificates');
      stored = await store.getTlsCa();
      if (!stored) throw new Error('the broker CA could not be read back from the state store');
    }
    this.ca = { cert: stored.cert, key: stored.secrets.key };
  }

  /** The CA certificate (PEM) bindings carry as ca_certificate. */
  caCertificate(): string {
    if (!this.ca) throw new Error('the broker CA is not loaded yet');
    return this.ca.cert;
  }

  /**
   * The names a certificate must cover: the host the credentials advertise (on Swarm: the instance's node). A loopback
   * address also gets `localhost`: clients that check an address's name against "localhost" (mysql2's verifyIdentity
   * with an IP host) then pass on a single machine too.
   */
  hostsOf(instance: Pick<InstanceRecord, 'advertisedHost'>): string[] {
    const host = instance.advertisedHost ?? this.parts.config.advertisedHost;
    return host === '127.0.0.1' || host === '::1' ? [host, 'localhost'] : [host];
  }

  /** The instance's current certificate: the stored one, or a new one when there is none or it is due for renewal. */
  async certificate(instance: InstanceRecord, now = new Date()): Promise<StoredCertificate> {
    const stored = await this.parts.store.getInstanceTls(instance.id);
    if (stored && !this.due(stored, instance, now)) return stored;
    return this.issue(instance, now, false);
  }

  /** Due for renewal (its time, other hosts), or issued by another CA than the one in use (the operator replaced it). */
  private due(stored: StoredCertificate, instance: InstanceRecord, now: Date): boolean {
    return needsRenewal(stored, this.hostsOf(instance), now) || !issuedBy(stored.cert, this.authority().cert);
  }

  /** A new certificate for the instance, stored; `pending` until it reached the running container. */
  private async issue(instance: InstanceRecord, now: Date, pending: boolean): Promise<StoredCertificate> {
    const hosts = this.hostsOf(instance);
    const issued = await issueServerCertificate(this.authority(), hosts, now, this.parts.config.tlsCertSeconds);
    const record: StoredCertificate = {
      cert: issued.cert,
      serial: issued.serial,
      notBefore: issued.notBefore,
      notAfter: issued.notAfter,
      hosts,
      ...(pending ? { pending } : {}),
      secrets: { key: issued.key },
    };
    await this.parts.store.putInstanceTls(instance.id, record);
    return record;
  }

  /** Puts the CA, the certificate and its key into the container's `tls.dir` (it may be created, not yet started). */
  async deliver(spec: TlsSpec, target: ContainerTarget, stored: StoredCertificate): Promise<void> {
    await target.engine.putFiles(target.container, spec.dir, this.files(spec, stored).files);
  }

  /** The CA, the certificate and its key as `tls.dir` receives them. */
  private files(spec: TlsSpec, stored: StoredCertificate): TlsFiles {
    const owner = { uid: spec.uid, gid: spec.gid };
    return {
      serial: stored.serial,
      dir: spec.dir,
      files: [
        { name: TLS_FILES.ca, content: Buffer.from(this.authority().cert), mode: 0o644, ...owner },
        { name: TLS_FILES.cert, content: Buffer.from(stored.cert), mode: 0o644, ...owner },
        // Servers refuse a key others may read (PostgreSQL wants 0600 and its own user).
        { name: TLS_FILES.key, content: Buffer.from(stored.secrets.key), mode: 0o600, ...owner },
      ],
    };
  }

  /**
   * For a container the orchestrator makes (a Swarm task): the files of a current certificate, and `delivered` to call
   * once a container runs with them. Undefined for an offering without TLS.
   */
  async current(definition: ServiceDefinition, instance: InstanceRecord, now = new Date()): Promise<(TlsFiles & { delivered(): Promise<void> }) | undefined> {
    if (!definition.tls) return undefined;
    const stored = await this.certificate(instance, now);
    return {
      ...this.files(definition.tls, stored),
      delivered: async () => {
        if (stored.pending) await this.parts.store.putInstanceTls(instance.id, delivered(stored));
      },
    };
  }

  /** For a new container (provision, recreate, repair): a current certificate, delivered before the first start. */
  async prepare(definition: ServiceDefinition, instance: InstanceRecord, target: ContainerTarget): Promise<void> {
    if (!definition.tls) return;
    const stored = await this.certificate(instance);
    await this.deliver(definition.tls, target, stored);
    if (stored.pending) await this.parts.store.putInstanceTls(instance.id, delivered(stored));
  }

  /**
   * Renews the instance's certificate when it is due, delivers it into the running container and
   * has the engine read it (on Swarm: a new task with the new files); a certificate renewed before whose delivery
   * failed is delivered again. Returns the certificate served from then on.
   */
  async renew(instance: InstanceRecord, options: { now?: Date; signal?: AbortSignal } = {}): Promise<StoredCertificate | undefined> {
    const { store, offerings, delivery, log } = this.parts;
    const definition = offerings.definitionOf(instance);
    if (!definition.tls || !delivery) return undefined;
    const now = options.now ?? new Date();
    let stored = await store.getInstanceTls(instance.id);
    if (!stored || this.due(stored, instance, now)) stored = await this.issue(instance, now, true);
    else if (!stored.pending) return stored;
    const signal = options.signal ?? this.stopping.signal;
    if ('replaceTls' in delivery) {
      await delivery.replaceTls(definition, instance, this.files(definition.tls, stored), signal);
    } else {
      const target = await delivery.locate(instance);
      await this.deliver(definition.tls, target, stored);
      await delivery.reloadTls(definition, instance, target, signal);
    }
    await store.putInstanceTls(instance.id, delivered(stored));
    log.info({ instanceId: instance.id, serial: stored.serial, notAfter: stored.notAfter }, 'renewed the instance’s TLS certificate');
    return stored;
  }

  /**
   * Starts the periodic renewal pass (every BROKER_TLS_RENEW_CHECK_SECONDS, once across replicas). `renewOne` runs each
   * renewal as an instance operation (src/broker/tls-renewal.ts), so it never meets a deprovision or an update.
   */
  startRenewals(renewOne: RenewOne): void {
    const periodMs = this.parts.config.tlsRenewCheckSeconds * 1000;
    this.renewals ??= new PeriodicPass(
      () => this.renewalPass(periodMs, renewOne),
      (error) => this.parts.log.warn({ reason: reasonOf(error) }, 'the TLS renewal pass failed; it runs again later'),
    );
    this.renewals.start(periodMs);
  }

  async stop(): Promise<void> {
    this.stopping.abort(new Error('the broker is stopping'));
    await this.renewals?.stop();
  }

  private authority(): KeyPair {
    if (!this.ca) throw new Error('the broker CA is not loaded yet');
    return this.ca;
  }

  /**
   * Renews every due certificate of a ready instance. The lease of this period goes to the first replica that finds
   * work, so a certificate is renewed once; a replica with nothing due leaves no trace in the store.
   */
  async renewalPass(periodMs: number, renewOne: RenewOne, now = new Date()): Promise<number> {
    const { store, offerings, owner, log } = this.parts;
    const due: InstanceRecord[] = [];
    for (const instance of await store.listInstances()) {
      if (instance.state !== 'ready' || !offerings.definitionOf(instance).tls) continue;
      const stored = await store.getInstanceTls(instance.id);
      if (!stored || stored.pending || this.due(stored, instance, now)) due.push(instance);
    }
    if (due.length === 0) return 0;
    if (!(await store.claimLease(`tls-renewal-pass-${Math.floor(now.getTime() / periodMs)}`, owner, 2 * periodMs))) return 0;
    let renewed = 0;
    for (const instance of due) {
      try {
        if (await renewOne(instance)) renewed++;
      } catch (error) {
        // The new certificate is stored; a container down now reads it at its next start, or the next pass retries.
        log.warn({ instanceId: instance.id, reason: reasonOf(error) }, 'could not renew the instance’s TLS certificate');
      }
    }
    return renewed;
  }
}

/** Renews one instance's certificate; false when it did not happen (the instance was busy, or the renewal failed). */
export type RenewOne = (instance: InstanceRecord) => Promise<boolean>;

/** The record once its certificate is in the container. */
function delivered(stored: StoredCertificate): StoredCertificate {
  const { pending: _pending, ...rest } = stored;
  return rest;
}
