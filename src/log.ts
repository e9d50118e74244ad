import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** JSON logs on stdout. Anything that looks like a secret is censored even if a caller passes it by mistake. */
export function createLogger(level: string, base: Record<string, unknown> = {}, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'osb-docker-broker', ...base },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: [
        'password',
        '*.password',
        '*.*.password',
        'credentials',
        '*.credentials',
        'authorization',
        '*.authorization',
        'req.headers.authorization',
        'env',
        '*.env',
      ],
      censor: '[redacted]',
    },
  };
  // Written asynchronously (flushed at exit): a synchronous write per request was the largest cost of the hot paths.
  return pino(options, destination ?? pino.destination({ dest: 1, sync: false }));
}
