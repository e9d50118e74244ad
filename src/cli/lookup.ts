import type { Plan, ServiceOffering } from '../osb/types.js';
import { CliError } from './errors.js';
import { closest } from './args.js';
import { didYouMean } from './names.js';
import { list, type Io } from './run.js';

/**
 * The offering by name or id; else by a tag only one offering has (`postgres` is one of postgresql's own tags), with a
 * note saying which was taken; else an error with the closest name.
 */
export function findOffering(offerings: ServiceOffering[], name: string, io?: Io): ServiceOffering {
  const offering = offerings.find((candidate) => candidate.name === name) ?? offerings.find((candidate) => candidate.id === name);
  if (offering) return offering;
  const tagged = offerings.filter((candidate) => (candidate.tags ?? []).some((tag) => tag.toLowerCase() === name.toLowerCase()));
  if (tagged.length === 1) {
    io?.err(`"${name}" is a tag of ${tagged[0]!.name}: using ${tagged[0]!.name}.`);
    return tagged[0]!;
  }
  const names = offerings.map((candidate) => candidate.name);
  const hint =
    tagged.length > 1 ? ` (a tag of ${list(tagged.map((candidate) => candidate.name))}: name one)` : didYouMean(name, names) || nearTag(offerings, name);
  throw new CliError(`unknown offering "${name}"${hint}; offerings: ${list(names)}`);
}

/** A near miss of a tag only one offering has ("postgress" for postgresql's "postgres") suggests that offering. */
function nearTag(offerings: ServiceOffering[], word: string): string {
  const owners = new Map<string, string[]>();
  for (const offering of offerings) for (const tag of offering.tags ?? []) owners.set(tag, [...(owners.get(tag) ?? []), offering.name]);
  const tag = closest(
    word,
    [...owners].filter(([, names]) => names.length === 1).map(([candidate]) => candidate),
  );
  return tag ? ` (did you mean "${owners.get(tag)![0]}"? "${tag}" is one of its tags)` : '';
}

export function findPlan(offering: ServiceOffering, name: string): Plan {
  const plan = offering.plans.find((candidate) => candidate.name === name) ?? offering.plans.find((candidate) => candidate.id === name);
  const names = offering.plans.map((candidate) => candidate.name);
  if (!plan) throw new CliError(`unknown plan "${name}" of ${offering.name}${didYouMean(name, names)}; plans: ${list(names)}`);
  return plan;
}
