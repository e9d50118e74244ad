import { closest } from './args.js';
import { UsageError } from './errors.js';

/**
 * Instance names the CLI gives: what Cloud Foundry's cf CLI users type without quoting, and what the broker can
 * carry into container names. Instances named elsewhere (a platform) are still found by whatever name they have.
 */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$/;
export const NAME_RULE = 'a name is 1 to 50 letters, digits, dots, hyphens and underscores, starting with a letter or digit (no spaces)';

export function checkNewName(name: string, usage: string): void {
  if (!NAME.test(name)) throw new UsageError(`${JSON.stringify(name)} is not a valid instance name: ${NAME_RULE}`, usage);
}

/** A word as a POSIX shell reads it back: as it is when safe, else in single quotes. */
export function shellWord(word: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** " (did you mean "x"?)" when a candidate is close enough, else "". */
export function didYouMean(word: string, candidates: string[]): string {
  const guess = closest(word, candidates);
  return guess ? ` (did you mean "${guess}"?)` : '';
}
