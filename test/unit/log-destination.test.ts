import test from 'ava';
import { spawn } from 'node:child_process';

// The broker's log lines are written in chunks (src/log.ts): each must still reach stdout soon, in order, and
// whatever waits when the process exits, however it exits, must be written.

const LOG_MODULE = new URL('../../src/log.js', import.meta.url).href;

/** Runs `body` in a fresh process with `log` (the broker's logger on stdout) and collects its stdout lines as they come. */
function run(body: string): Promise<{ lines: Array<{ msg: string; at: number }>; code: number | null }> {
  const script = `import { createLogger } from ${JSON.stringify(LOG_MODULE)};\nconst log = createLogger('info');\n${body}`;
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    const lines: Array<{ msg: string; at: number }> = [];
    let rest = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop()!;
      for (const line of parts) lines.push({ msg: (JSON.parse(line) as { msg: string }).msg, at: performance.now() - started });
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ lines, code }));
  });
}

test('a line reaches stdout while the process runs on, without more lines to push it', async (t) => {
  const { lines } = await run(`log.info('first'); setTimeout(() => log.info('second'), 3000);`);
  t.deepEqual(
    lines.map((line) => line.msg),
    ['first', 'second'],
  );
  // Written within about 50 ms; seconds before the next line, even on a loaded machine.
  t.true(lines[0]!.at < lines[1]!.at - 1500, `first at ${lines[0]!.at} ms, second at ${lines[1]!.at} ms`);
});

test('lines waiting when the process exits are written, in order', async (t) => {
  const exit = await run(`for (let i = 0; i < 2000; i++) log.info({ i, pad: 'x'.repeat(100) }, 'line ' + i); log.info('stopped'); process.exit(3);`);
  t.is(exit.code, 3);
  t.deepEqual(
    exit.lines.map((line) => line.msg),
    [...Array.from({ length: 2000 }, (_, i) => `line ${i}`), 'stopped'],
  );
  const ended = await run(`log.info('only line');`);
  t.deepEqual(
    ended.lines.map((line) => line.msg),
    ['only line'],
  );
  const thrown = await run(`setTimeout(() => { log.error('about to fail'); throw new Error('boom'); }, 10);`);
  t.not(thrown.code, 0);
  t.deepEqual(
    thrown.lines.map((line) => line.msg),
    ['about to fail'],
  );
});
