/** A failure to explain to the user in one or two lines; exit code 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** Wrong or missing arguments: the message plus the command's usage line; exit code 2. */
export class UsageError extends CliError {
  constructor(
    message: string,
    readonly usage?: string,
  ) {
    super(message, 2);
  }
}
