import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/config.js';

/**
 * A catalog folder holding a copy of one offering of the real catalog, for tests that need it changed: `edit` changes
 * its service.json, `files` anything in its folder (a script made slow or broken). Returns the catalog folder.
 */
export function catalogCopy(
  offering: string,
  change: { edit?: (service: any) => void; files?: (folder: string) => void } = {},
  into = mkdtempSync(path.join(tmpdir(), 'catalog-')),
): string {
  const folder = path.join(into, offering);
  cpSync(path.join(PACKAGE_ROOT, 'catalog', offering), folder, { recursive: true });
  if (change.edit) {
    const file = path.join(folder, 'service.json');
    const service = JSON.parse(readFileSync(file, 'utf8'));
    change.edit(service);
    writeFileSync(file, JSON.stringify(service));
  }
  change.files?.(folder);
  return into;
}

/** The offering's id and first plan's id, from its service.json in the real catalog. */
export function offeringIds(offering: string): { service: string; plan: string } {
  const service = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'catalog', offering, 'service.json'), 'utf8'));
  return { service: service.offering.id, plan: service.offering.plans[0].id };
}
