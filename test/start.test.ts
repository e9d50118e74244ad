import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PACKAGE_ROOT } from '../src/config.js';
import { waitFor } from '../src/wait.js';

/**
 * `npm start` compiles only when the sources changed (scripts/build.sh --if-stale). Run on a small project of its
 * own with the real script, the real tsc and the real package files, so the shared dist/ is never touched.
 */

const run = promisify(execFile);

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function build(cwd: string, ...args: string[]): Promise<Outcome> {
  const started = performance.now();
  try {
    const { stdout, stderr } = await run('bash', [path.join(cwd, 'scripts/build.sh'), ...args], { cwd });
    return { code: 0, stdout: stdout.trim(), stderr, ms: performance.now() - started };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout.trim(), stderr: failed.stderr, ms: performance.now() - started };
  }
}

function project(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'osb-start-'));
  mkdirSync(path.join(dir, 'scripts'));
  mkdirSync(path.join(dir, 'src/cli'), { recursive: true });
  copyFileSync(path.join(PACKAGE_ROOT, 'scripts/build.sh'), path.join(dir, 'scripts/build.sh'));
  copyFileSync(path.join(PACKAGE_ROOT, 'package.json'), path.join(dir, 'package.json'));
  copyFileSync(path.join(PACKAGE_ROOT, 'package-lock.json'), path.join(dir, 'package-lock.json'));
  symlinkSync(path.join(PACKAGE_ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  // The project's compiler options, sources of this small project only.
  const tsconfig = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'tsconfig.json'), 'utf8'));
  writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ ...tsconfig, include: ['src/**/*.ts'] }, null, 2));
  writeFileSync(path.join(dir, 'src/main.ts'), "import { greeting } from './greeting.js';\nconsole.log(greeting);\n");
  writeFileSync(path.join(dir, 'src/greeting.ts'), "export const greeting: string = 'hello';\n");
  writeFileSync(path.join(dir, 'src/cli/osb-docker.ts'), "#!/usr/bin/env node\nconsole.log('cli');\n");
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

test('npm start compiles only when a source, tsconfig or the lock file changed', async (t) => {
  t.timeout(120_000);
  const { dir, remove } = project();
  t.teardown(remove);
  const file = (name: string) => path.join(dir, name);

  t.like(await build(dir, '--check'), { code: 1, stdout: 'stale' }, 'nothing was compiled yet');
  const first = await build(dir, '--if-stale');
  t.is(first.code, 0, first.stderr);
  t.log(`first start compiled in ${Math.round(first.ms)} ms`);
  t.is(readFileSync(file('dist/src/greeting.js'), 'utf8').includes("'hello'"), true);
  t.truthy(statSync(file('dist/src/cli/osb-docker.js')).mode & 0o100, 'the CLI is executable');

  const fresh = await build(dir, '--check');
  t.like(fresh, { code: 0, stdout: 'fresh' });
  const compiledAt = statSync(file('dist/src/main.js')).mtimeMs;
  const skipped = await build(dir, '--if-stale');
  t.is(skipped.code, 0);
  t.regex(skipped.stderr, /up to date/);
  t.is(statSync(file('dist/src/main.js')).mtimeMs, compiledAt, 'nothing was compiled again');
  t.log(
    `the check said fresh in ${Math.round(fresh.ms)} ms; an unchanged start took ${Math.round(skipped.ms)} ms, against ${Math.round(first.ms)} ms compiling`,
  );

  // Contents count, not times: a touched but unchanged file is still fresh; an edit is stale, reverting it fresh.
  const original = readFileSync(file('src/greeting.ts'), 'utf8');
  const later = new Date(Date.now() + 5000);
  utimesSync(file('src/greeting.ts'), later, later);
  t.like(await build(dir, '--check'), { stdout: 'fresh' }, 'touched, same content');
  writeFileSync(file('src/greeting.ts'), "export const greeting: string = 'hello again';\n");
  t.like(await build(dir, '--check'), { code: 1, stdout: 'stale' }, 'an edited source');
  writeFileSync(file('src/greeting.ts'), original);
  t.like(await build(dir, '--check'), { stdout: 'fresh' }, 'the edit reverted');

  // The rebuild takes the change into dist/.
  writeFileSync(file('src/greeting.ts'), "export const greeting: string = 'hello again';\n");
  t.is((await build(dir, '--if-stale')).code, 0);
  t.is(readFileSync(file('dist/src/greeting.js'), 'utf8').includes("'hello again'"), true);
  t.like(await build(dir, '--check'), { stdout: 'fresh' });

  // A new file, a deleted file, the compiler options, the lock file (type packages): each makes dist/ stale.
  writeFileSync(file('src/extra.ts'), 'export const extra = 1;\n');
  t.like(await build(dir, '--check'), { stdout: 'stale' }, 'a new source');
  unlinkSync(file('src/extra.ts'));
  t.like(await build(dir, '--check'), { stdout: 'fresh' });
  unlinkSync(file('src/cli/osb-docker.ts'));
  t.like(await build(dir, '--check'), { stdout: 'stale' }, 'a deleted source');
  writeFileSync(file('src/cli/osb-docker.ts'), "#!/usr/bin/env node\nconsole.log('cli');\n");
  t.like(await build(dir, '--check'), { stdout: 'fresh' });
  for (const name of ['package-lock.json', 'tsconfig.json']) {
    const content = readFileSync(file(name), 'utf8');
    writeFileSync(file(name), `${content}\n`);
    t.like(await build(dir, '--check'), { stdout: 'stale' }, `another ${name}`);
    writeFileSync(file(name), content);
    t.like(await build(dir, '--check'), { stdout: 'fresh' });
  }

  // A source that does not compile fails the start and records nothing: the next start tries again.
  writeFileSync(file('src/greeting.ts'), 'export const greeting: number = "not a number";\n');
  const broken = await build(dir, '--if-stale');
  t.not(broken.code, 0, 'a type error fails the start');
  t.like(await build(dir, '--check'), { stdout: 'stale' }, 'still stale after a failed compile');

  // A compile killed halfway (kill -9, a closed terminal) leaves dist/ half written: it must never pass for fresh,
  // not even once the sources are back to what the last good compile saw.
  writeFileSync(file('src/greeting.ts'), original);
  t.is((await build(dir, '--if-stale')).code, 0);
  writeFileSync(file('src/greeting.ts'), "export const greeting: string = 'interrupted';\n");
  const compiling = spawn('bash', [file('scripts/build.sh'), '--if-stale'], { cwd: dir, detached: true, stdio: 'ignore' });
  const ended = new Promise((resolve) => compiling.once('exit', resolve));
  await waitFor(() => (existsSync(file('dist/.build-fingerprint')) ? undefined : true), { intervalMs: 5, timeoutMs: 30_000 });
  process.kill(-compiling.pid!, 'SIGKILL');
  await ended;
  writeFileSync(file('src/greeting.ts'), original);
  t.like(await build(dir, '--check'), { code: 1, stdout: 'stale' }, 'an interrupted compile is never fresh');
  t.is((await build(dir, '--if-stale')).code, 0);
  t.like(await build(dir, '--check'), { stdout: 'fresh' });
});

test('the check of the real sources reads them quickly and compiles nothing', async (t) => {
  // Read-only on the shared tree: fresh or stale depends on what others compiled last, the time does not.
  const dist = path.join(PACKAGE_ROOT, 'dist/src/main.js');
  const before = statSync(dist).mtimeMs;
  const check = await build(PACKAGE_ROOT, '--check');
  t.true(check.stdout === 'fresh' || check.stdout === 'stale', check.stdout);
  t.is(statSync(dist).mtimeMs, before);
  t.log(`--check of the real sources: ${check.stdout} in ${Math.round(check.ms)} ms`);
});
