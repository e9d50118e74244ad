/**
 * Opening the dashboard of an instance whose log holds 100,000 lines: time from navigation to the first log lines
 * on screen in Chromium, next to `docker logs --tail 500` of the same container.
 */
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import type { BrokerSide } from './broker-side.js';
import { docker } from './raw.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const LOG_LINES = 100_000;

export interface DashboardSamples {
  firstLinesMs: number[];
  dockerTailMs: number[];
}

export async function benchDashboard(broker: BrokerSide, rounds: number): Promise<DashboardSamples | string> {
  if (!existsSync(CHROMIUM)) return `skipped: no Chromium at ${CHROMIUM} (apt-get install chromium)`;
  const instance = await broker.provision();
  const container = broker.containerName(instance.id);
  try {
    // Written to the server's own stderr, so they are the container's log like any server output.
    await docker(['exec', '-u', 'postgres', container, 'sh', '-c', `seq 1 ${LOG_LINES} | sed 's/^/bench log line /' > /proc/1/fd/2`]);
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    const samples: DashboardSamples = { firstLinesMs: [], dockerTailMs: [] };
    try {
      for (let round = 0; round <= rounds; round++) {
        const link = await broker.dashboardUrl(instance.id);
        const page = await browser.newPage();
        const started = performance.now();
        await page.goto(link, { waitUntil: 'commit' });
        await page.locator('#logs .line').first().waitFor();
        const elapsed = performance.now() - started;
        await page.close();
        const tailStarted = performance.now();
        await docker(['logs', '--tail', '500', container]);
        const tail = performance.now() - tailStarted;
        if (round === 0) continue; // warm-up: first page load, module parsing
        samples.firstLinesMs.push(elapsed);
        samples.dockerTailMs.push(tail);
      }
    } finally {
      await browser.close();
    }
    return samples;
  } finally {
    await broker.deprovision(instance.id);
  }
}
