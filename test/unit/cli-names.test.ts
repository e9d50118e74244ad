import test from 'ava';
import { execFileSync } from 'node:child_process';
import { closest } from '../../src/cli/args.js';
import { UsageError } from '../../src/cli/errors.js';
import { checkNewName, didYouMean, shellWord } from '../../src/cli/names.js';

test('printed hints quote a name only when a shell needs it, and read back as the name', (t) => {
  t.is(shellWord('orders-db'), 'orders-db');
  t.is(shellWord('my db'), "'my db'");
  t.is(shellWord("bob's db"), `'bob'\\''s db'`);
  t.is(shellWord('$HOME;rm'), "'$HOME;rm'");
  // sh reads each back as the very name.
  for (const name of ['orders-db', 'my db', "bob's db", '$HOME;rm', 'a"b`c\\d']) {
    t.is(execFileSync('sh', ['-c', `printf %s ${shellWord(name)}`], { encoding: 'utf8' }), name);
  }
});

test('new instance names: letters, digits, dots, hyphens and underscores, the rule in the error', (t) => {
  for (const name of ['shop', 'Orders-DB_2', 'a.b', 'x'.repeat(50)]) t.notThrows(() => checkNewName(name, 'usage'));
  for (const name of ['my shop', '-shop', '.hidden', 'x'.repeat(51), 'shop/1', 'ünï', '']) {
    const error = t.throws(() => checkNewName(name, 'usage'), { instanceOf: UsageError });
    t.regex(error.message, /is not a valid instance name: a name is 1 to 50 letters, digits, dots, hyphens and underscores/);
  }
});

test('did-you-mean: a swapped pair of letters is one typo, far-off words get no guess', (t) => {
  t.is(closest('shpo', ['shop', 'cache']), 'shop');
  t.is(closest('postgrs', ['postgresql', 'redis']), 'postgresql');
  t.is(closest('smal', ['small', 'medium']), 'small');
  t.is(closest('zzz', ['small', 'medium']), undefined);
  t.is(didYouMean('shpo', ['shop']), ' (did you mean "shop"?)');
  t.is(didYouMean('zzz', ['shop']), '');
});
