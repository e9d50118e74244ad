import { createHash } from 'node:crypto';
import path from 'node:path';
import type { SecretFile, SwarmManager } from '../docker/swarm.js';
import { LABEL } from '../docker/types.js';
import type { InstanceRecord } from '../store/records.js';
import type { TlsFiles } from './tls.js';

type Instance = Pick<InstanceRecord, 'id' | 'containerName'>;

/** The role label of an instance's TLS secrets: listed and removed with the instance, never taken for a service. */
const SECRET_ROLE = 'instance-tls';

/**
 * An instance's TLS files as Swarm secrets, one per file: kept encrypted in the Swarm's Raft log, sent only to the node
 * that runs the task, mounted there read-only on tmpfs at the offering's `tls.dir` (never on the volume, in labels,
 * env or the command). Secrets cannot change: each certificate gets secrets of its own (named after its serial), a
 * renewal replaces the task with one that mounts the new ones, and the old ones are removed once no service uses them.
 */
export class SwarmTlsSecrets {
  constructor(
    private readonly manager: SwarmManager,
    private readonly brokerId: string,
  ) {}

  /** The secrets holding `tls`'s files, made when missing, as the task mounts them. */
  async secretsFor(instance: Instance, tls: TlsFiles): Promise<SecretFile[]> {
    const labels = this.labels(instance);
    const secrets: SecretFile[] = [];
    for (const file of tls.files) {
      const name = this.secretName(instance, tls.serial, file.name);
      const id = await this.manager.ensureSecret(name, file.content, labels);
      secrets.push({ id, name, target: path.posix.join(tls.dir, file.name), uid: file.uid, gid: file.gid, mode: file.mode });
    }
    return secrets;
  }

  /**
   * Removes the instance's secrets but those in `keep` (all without it). One a service still uses (an update that did
   * not go through) stays until the next call.
   */
  async removeOthers(instance: Pick<InstanceRecord, 'id'>, keep: SecretFile[] = []): Promise<void> {
    const kept = new Set(keep.map((secret) => secret.id));
    for (const secret of await this.manager.listSecrets(this.labels(instance))) {
      if (!kept.has(secret.id)) await this.manager.removeSecret(secret.id);
    }
  }

  private labels(instance: Pick<InstanceRecord, 'id'>): Record<string, string> {
    return { [LABEL.broker]: this.brokerId, [LABEL.role]: SECRET_ROLE, [LABEL.instance]: instance.id };
  }

  /**
   * `osb-tls-<16 hex of the instance's service name>-<20 hex of the serial>-<file>`: within Swarm's 64 characters for
   * any instance id, and one name per certificate and file (a name is never reused for other content).
   */
  private secretName(instance: Instance, serial: string, file: string): string {
    const owner = createHash('sha256').update(instance.containerName).digest('hex').slice(0, 16);
    return `osb-tls-${owner}-${serial.toLowerCase().slice(0, 20)}-${file.replace(/\.pem$/, '')}`;
  }
}
