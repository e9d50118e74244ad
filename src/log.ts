import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** JSON logs. Anything that looks like a secret is censored even if a caller passes it by mistake. */
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
  return destination ? pino(options, destination) : pino(options);
}
