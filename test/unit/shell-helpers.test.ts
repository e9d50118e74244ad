import test from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/config.js';

// Every catalog folder carries its own copy of the shared shell helpers (scripts/lib/common.sh, memory.sh), since
// each folder is a self-contained image recipe. A function defined in two or more copies must be the same
// everywhere, byte for byte, unless it is listed here as engine-specific.
const ENGINE_SPECIFIC: Record<string, string> = {
  check_user_name: "account-name rules are the engine's own (length limits and reserved names of MariaDB, Mosquitto, RabbitMQ, Redis)",
  check_database_name: 'MariaDB and PostgreSQL differ in reserved database names, name length and the derived owner role',
  check_password: 'what a password may contain depends on where it is kept (Cyrus sasldb vs. the Mosquitto password file)',
  listeners_conf: "each engine's own listener configuration (RabbitMQ's rabbitmq.conf vs. Mosquitto's listener blocks)",
  apply_require_tls: 'RabbitMQ moves its plain listener on the running node; Mosquitto restarts inside the container',
};

const catalog = path.join(PACKAGE_ROOT, 'catalog');

interface Copy {
  /** `<folder>/scripts/lib/<file>`, relative to catalog/. */
  where: string;
  body: string;
}

/** The shared shell libraries: every `catalog/<folder>/scripts/lib/*.sh`. */
function libraries(): string[] {
  const files: string[] = [];
  for (const folder of readdirSync(catalog).sort()) {
    const lib = path.join(catalog, folder, 'scripts', 'lib');
    if (!existsSync(lib)) continue;
    for (const file of readdirSync(lib).sort()) {
      if (file.endsWith('.sh')) files.push(path.join(folder, 'scripts', 'lib', file));
    }
  }
  return files;
}

/**
 * The functions a library defines, by name: from the `name() {` line (at the start of a line) to the `}` that closes
 * it at the start of a line, or the same line for a one-line definition (`name() { ...; }`).
 */
function functionsOf(file: string): Map<string, string> {
  const lines = readFileSync(path.join(catalog, file), 'utf8').split('\n');
  const found = new Map<string, string>();
  for (let start = 0; start < lines.length; start++) {
    const match = /^(?:function\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*\(\)\s*\{(.*)$/.exec(lines[start]!);
    if (!match) continue;
    let end = start;
    if (!/\}\s*$/.test(match[2]!)) {
      while (end < lines.length && lines[end] !== '}') end++;
      if (end === lines.length) throw new Error(`catalog/${file}: ${match[1]}() has no closing "}" at the start of a line`);
    }
    if (found.has(match[1]!)) throw new Error(`catalog/${file}: ${match[1]}() is defined twice`);
    found.set(match[1]!, lines.slice(start, end + 1).join('\n'));
    start = end;
  }
  return found;
}

const copies = new Map<string, Copy[]>();
for (const file of libraries()) {
  for (const [name, body] of functionsOf(file)) {
    copies.set(name, [...(copies.get(name) ?? []), { where: file, body }]);
  }
}
const shared = [...copies].filter(([, list]) => list.length >= 2).sort(([a], [b]) => a.localeCompare(b));

test('the helper parser finds die() and require_env() in the copies of common.sh', (t) => {
  const commons = libraries().filter((file) => file.endsWith('/common.sh'));
  t.true(commons.length >= 7, `found ${commons.length} copies of common.sh`);
  t.is(copies.get('die')?.length, commons.length, 'every common.sh defines die()');
  t.true((copies.get('require_env')?.length ?? 0) >= 2);
  t.true((copies.get('memory_limit_bytes')?.length ?? 0) >= 2, 'memory.sh is shared by several engines');
});

for (const [name, list] of shared) {
  if (name in ENGINE_SPECIFIC) continue;
  test(`${name}() is the same in every catalog folder that defines it`, (t) => {
    // The copy most folders have is the reference; name every folder that differs from it.
    const counts = new Map<string, number>();
    for (const copy of list) counts.set(copy.body, (counts.get(copy.body) ?? 0) + 1);
    const reference = [...counts].sort(([, a], [, b]) => b - a)[0]![0];
    const model = list.find((copy) => copy.body === reference)!;
    for (const copy of list) {
      t.is(copy.body, reference, `${name}() in catalog/${copy.where} differs from the copy in catalog/${model.where}`);
    }
  });
}

test('every engine-specific function of the allow-list is still defined in two copies that differ', (t) => {
  for (const [name, reason] of Object.entries(ENGINE_SPECIFIC)) {
    const list = copies.get(name) ?? [];
    t.true(list.length >= 2, `${name}() (${reason}) is no longer shared: remove it from the allow-list`);
    t.true(new Set(list.map((copy) => copy.body)).size >= 2, `${name}() is now identical everywhere: remove it from the allow-list`);
  }
});
