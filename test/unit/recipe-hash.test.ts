import test from 'ava';
import { chmodSync, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/config.js';
import { recipeHash } from '../../src/images/builder.js';

// An image is rebuilt when its recipe changes: any file of its folder, but not the catalog entry the broker reads.
test('the recipe changes with a script, its mode or the Dockerfile, never with service.json', (t) => {
  const folder = mkdtempSync(path.join(tmpdir(), 'recipe-'));
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));
  cpSync(path.join(PACKAGE_ROOT, 'catalog', 'redis'), folder, { recursive: true });
  const before = recipeHash(folder);
  t.is(recipeHash(path.join(PACKAGE_ROOT, 'catalog', 'redis')), before, 'the same content, the same recipe');

  const entry = path.join(folder, 'service.json');
  writeFileSync(entry, readFileSync(entry, 'utf8').replace('"description"', '"description" '));
  t.is(recipeHash(folder), before, 'a catalog edit builds nothing');

  const script = path.join(folder, 'scripts', 'bind');
  chmodSync(script, 0o700);
  const modeChanged = recipeHash(folder);
  t.not(modeChanged, before);
  writeFileSync(script, `${readFileSync(script, 'utf8')}\n# changed\n`);
  t.not(recipeHash(folder), modeChanged);
  writeFileSync(path.join(folder, 'Dockerfile'), `${readFileSync(path.join(folder, 'Dockerfile'), 'utf8')}\n`);
  t.not(recipeHash(folder), before);
});
