import { ConfigError, loadConfig } from './config.js';
import { CatalogError } from './catalog/load.js';
import { brokerSecrets } from './generated-secrets.js';
import { createLogger, stdoutDestination } from './log.js';
import { startBroker } from './server.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config.logLevel, {}, stdoutDestination(config.logFormat));
  const secrets = brokerSecrets(config.stateDir, config.password, config.encryptionKey);
  if (secrets.passwordGenerated) {
    // Shown once, on the terminal only; it is kept in the state folder, never logged.
    process.stderr.write(
      `\nNo BROKER_PASSWORD was set, so one was generated and saved in ${config.stateDir}/secrets.json:\n` +
        `  username: ${config.username}\n  password: ${secrets.password}\n\n`,
    );
  }
  const running = await startBroker({ ...config, password: secrets.password, encryptionKey: secrets.encryptionKey }, log);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'stopping at once');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal, graceSeconds: config.shutdownSeconds }, 'stopping: operations are handed back, requests in flight may finish');
    running.close().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        log.error({ reason: error instanceof Error ? error.message : String(error) }, 'stopping failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((error: Error) => {
  // One clear line; the stack only helps when something unexpected broke (LOG_LEVEL=debug shows it).
  const detail = process.env.LOG_LEVEL === 'debug' && !(error instanceof ConfigError || error instanceof CatalogError) ? `\n${error.stack}` : '';
  process.stderr.write(`osb-docker-broker cannot start: ${error.message}${detail}\n`);
  process.exit(1);
});
