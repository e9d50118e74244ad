#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { commandHelp, commandNamed, helpText, parseCommandLine } from './args.js';
import { BrokerClient, brokerSettings } from './client.js';
import { COMMAND_RUNNERS, type Io } from './commands.js';
import { CliError, UsageError } from './errors.js';

/** `osb-docker`: speaks OSB to a running broker like a platform does. Exit codes: 0 done, 1 failed, 2 wrong arguments. */
async function main(argv: string[], io: Io): Promise<number> {
  try {
    const { command, positionals, flags } = parseCommandLine(argv);
    if (flags.version && !command) {
      io.out((JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version);
      return 0;
    }
    if (!command || command.name === 'help') {
      const topic = positionals[0] === undefined ? undefined : commandNamed(positionals[0]);
      if (positionals[0] !== undefined && !topic) throw new UsageError(`no command "${positionals[0]}"`, 'usage: osb-docker help [<command>]');
      if (!command && !flags.help) {
        io.err(helpText());
        return 2;
      }
      io.out(topic ? commandHelp(topic) : helpText());
      return 0;
    }
    if (flags.help) {
      io.out(commandHelp(command));
      return 0;
    }
    const client = new BrokerClient(brokerSettings(flags));
    await COMMAND_RUNNERS[command.name]!({ client, args: positionals, flags, io, command });
    return 0;
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    io.err(`osb-docker: ${error.message}`);
    if (error instanceof UsageError && error.usage) io.err(error.usage);
    return error.exitCode;
  }
}

const inPlace = process.stderr.isTTY === true;
process.exitCode = await main(process.argv.slice(2), {
  out: (text) => process.stdout.write(`${text}\n`),
  err: (text) => process.stderr.write(`${text}\n`),
  // On a terminal the progress line is rewritten in place ("" clears it); elsewhere each is a line of its own.
  progress: (text) => (inPlace ? process.stderr.write(`\r\x1b[K${text}`) : text && process.stderr.write(`${text}\n`)),
  progressInPlace: inPlace,
  stdout: process.stdout,
  stdin: process.stdin,
});
