import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { newPassword } from './broker/ids.js';

export interface BrokerSecrets {
  password: string;
  encryptionKey: Buffer;
  /** True when the password was made just now: the only time it is shown. */
  passwordGenerated: boolean;
}

/** Makes the mode of an existing file or folder exactly `mode`: one made by hand, or by an older version, may be looser. */
function tighten(target: string, mode: number): void {
  if (existsSync(target) && (statSync(target).mode & 0o777) !== mode) chmodSync(target, mode);
}

/**
 * Secrets not given in the environment are generated once and kept in <state dir>/secrets.json (mode 600),
 * so the broker's password and the key to its stored secrets survive restarts. The folder is kept at mode 700.
 */
export function brokerSecrets(stateDir: string, password?: string, encryptionKey?: Buffer): BrokerSecrets {
  const file = path.join(stateDir, 'secrets.json');
  tighten(stateDir, 0o700);
  tighten(file, 0o600);
  const stored = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { password?: string; encryptionKey?: string }) : {};
  let passwordGenerated = false;
  if (!password && !stored.password) {
    stored.password = newPassword();
    passwordGenerated = true;
  }
  if (!encryptionKey && !stored.encryptionKey) stored.encryptionKey = randomBytes(32).toString('hex');
  if (passwordGenerated || (!encryptionKey && !existsSync(file))) {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(file, JSON.stringify(stored, null, 2), { mode: 0o600 });
    tighten(stateDir, 0o700);
    tighten(file, 0o600);
  }
  return {
    password: password ?? stored.password!,
    encryptionKey: encryptionKey ?? Buffer.from(stored.encryptionKey!, 'hex'),
    passwordGenerated,
  };
}
