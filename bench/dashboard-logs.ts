/**
 * The dashboard of an instance whose container log holds 100,000 lines: from requesting the page to the first log
 * lines shown in Chromium, the log endpoint alone (GET …/api/logs?tail=500 with the page's session), and
 * `docker logs --tail 500` of the same container as the floor. The target: first lines in under 300 ms.
 *
 * npm run bench:dashboard-logs [-- rounds]   (default 10 rounds after one warm-up)
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { chromium } from 'playwright-core';
import { startBrokerSide } from './broker-side.js';
import { docker } from './raw.js';
import { median, ms, p95, table } from './stats.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const LOG_LINES = 100_000;
const TARGET_MS = 300;
const rounds = Number(process.argv[2]) || 10;
/** Marks the animation frame in which the first server-rendered log line is painted (a MutationObserver from the start). */
const PAINT_PROBE = `new MutationObserver((changes, observer) => {
  if (!document.querySelector('#logs .line')) return;
  observer.disconnect();
  requestAnimationFrame(() => { window.__logsPainted = performance.now(); });
}).observe(document, { childList: true, subtree: true });`;

async function main(): Promise<void> {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  const broker = await startBrokerSide();
  try {
    const instance = await broker.provision();
    const container = (await docker(['ps', '-q', '--filter', `label=io.osb-broker.instance=${instance.id}`])).trim();
    // Written to the server's own stderr, so they are the container's log like any server output.
    await docker(['exec', '-u', 'postgres', container, 'sh', '-c', `seq 1 ${LOG_LINES} | sed 's/^/bench log line /' > /proc/1/fd/2`]);
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    const samples = { painted: [] as number[], page: [] as number[], endpoint: [] as number[], docker: [] as number[] };
    let shown = 0;
    try {
      for (let round = 0; round <= rounds; round++) {
        // A fresh browser context each round: no cached assets, as a first visit.
        const context = await browser.newContext();
        const page = await context.newPage();
        // In the page, from the navigation's start: the frame in which the first log line is first painted.
        await page.addInitScript(PAINT_PROBE);
        await page.goto(await broker.dashboardUrl(instance.id), { waitUntil: 'commit' }); // the link's redirect sets the session
        const pageUrl = page.url();
        await page.goto('about:blank');
        const started = performance.now();
        await page.goto(pageUrl, { waitUntil: 'commit' });
        await page.locator('#logs .line').last().waitFor();
        const pageMs = performance.now() - started;
        const paintedMs = Number(await page.waitForFunction('window.__logsPainted').then((handle) => handle.jsonValue()));
        shown = await page.locator('#logs .line').count();
        const cookie = (await context.cookies()).map((each) => `${each.name}=${each.value}`).join('; ');
        await context.close();

        const endpointStarted = performance.now();
        const response = await fetch(`${pageUrl}/api/logs?tail=500`, { headers: { Cookie: cookie } });
        const body = (await response.json()) as { lines: unknown[] };
        const endpointMs = performance.now() - endpointStarted;
        if (body.lines.length !== 500) throw new Error(`the log endpoint answered ${body.lines.length} lines`);

        const dockerStarted = performance.now();
        await docker(['logs', '--tail', '500', '--timestamps', container]);
        const dockerMs = performance.now() - dockerStarted;
        if (round === 0) continue; // warm-up
        samples.painted.push(paintedMs);
        samples.page.push(pageMs);
        samples.endpoint.push(endpointMs);
        samples.docker.push(dockerMs);
      }
    } finally {
      await browser.close();
    }
    const floor = median(samples.docker);
    const row = (name: string, values: number[]) => [name, ms(median(values)), ms(p95(values)), `${(median(values) / floor).toFixed(2)}x`];
    console.log(
      `\nDashboard logs: a container log of ${LOG_LINES.toLocaleString('en')} lines, ${rounds} rounds after a warm-up (${shown} lines on the page)\n`,
    );
    console.log(
      table(
        ['', 'median', 'p95', 'vs docker logs'],
        [
          row('page request to first log lines painted (in Chromium)', samples.painted),
          row('page request to log lines seen by the test driver', samples.page),
          row('log endpoint alone (api/logs?tail=500)', samples.endpoint),
          row('docker logs --tail 500 (CLI)', samples.docker),
        ],
      ),
    );
    const verdict = median(samples.painted) < TARGET_MS ? 'met' : 'NOT met';
    const load = (await readFile('/proc/loadavg', 'utf8').catch(() => '?')).split(' ').slice(0, 3).join(' ');
    console.log(
      `\nTarget: first lines painted in under ${TARGET_MS} ms (median ${ms(median(samples.painted))}): ${verdict}. Load average ${load} on ${availableParallelism()} CPUs.`,
    );
    await broker.deprovision(instance.id);
  } finally {
    await broker.stop();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
