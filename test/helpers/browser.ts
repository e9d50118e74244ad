import { chromium, type Browser } from 'playwright-core';

const BASE_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];

/** Debian's chromium, headless, as every browser test runs it (CHROMIUM_PATH overrides where it is), plus `extra` flags. */
export function launchChromium(extra: string[] = []): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: [...BASE_ARGS, ...extra.filter((flag) => !BASE_ARGS.includes(flag))],
  });
}
