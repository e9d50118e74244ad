import type { Server } from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT, type Config } from './config.js';
import { loadCatalog } from './catalog/load.js';
import { DockerEngine } from './docker/engine.js';
import { ImageBuilder } from './images/builder.js';
import type { Logger } from './log.js';
import { DockerBroker } from './broker/broker.js';
import { recover, type RecoveryReport } from './broker/recovery.js';
import { portIsFree } from './broker/probe.js';
import { DockerRuntime } from './broker/runtime.js';
import { SwarmRuntime } from './broker/swarm-runtime.js';
import { BackupService } from './broker/backups.js';
import { BackupScheduler, backupOutcomes } from './broker/backup-schedule.js';
import { Offerings } from './broker/offerings.js';
import { createBackupStore, loadBackupConfig, type BackupConfig } from './backups/index.js';
import { Reconciler } from './broker/reconciler.js';
import { InstanceTls } from './broker/tls.js';
import { UsageSampler } from './broker/usage-sampler.js';
import { withDiskUsage } from './broker/listing-disk.js';
import { startEmbeddedRedis } from './embedded-redis.js';
import { RedisStore } from './store/redis-store.js';
import { Sealer } from './store/sealer.js';
import { createApp } from './http/app.js';
import { signInClient, ssoCallbackPath, withDashboardClients } from './catalog/dashboard-clients.js';
import { DashboardLinks } from './dashboard/links.js';
import { DashboardSso } from './dashboard/sso.js';
import { DashboardBackups } from './dashboard/backups.js';
import { DashboardService } from './dashboard/service.js';
import { DashboardTokens } from './dashboard/tokens.js';
import type { LinkedInstance } from './broker/dashboard-link.js';
import { DependencyChecks } from './health.js';
import { BrokerMetrics } from './metrics.js';
import { listenForMetrics } from './http/metrics-listener.js';
import { EngineStats } from './broker/engine-stats.js';
import { DashboardEngine } from './dashboard/engine.js';

/** Configuration with the secrets resolved (from the environment or the state folder). */
export type BrokerConfig = Config & { password: string; encryptionKey: Buffer; backup?: BackupConfig };

export interface RunningBroker {
  server: Server;
  url: string;
  publicUrl: string;
  broker: DockerBroker;
  recovery: RecoveryReport;
  /** Keeps the engine in line with the store; `snapshot()` counts instances by real state and drift. */
  reconciler: Reconciler;
  /** The Prometheus registry; the operation runner and a reconciler report to it. */
  metrics: BrokerMetrics;
  /** Scheduled backups and the pass over deleted instances' backups. */
  backupSchedules: BackupScheduler;
  /** The engine stats collection (its periodic pass) and the dashboard's readings. */
  engineStats: EngineStats;
  /** The instances' TLS certificates (renewal pass, renew on demand); undefined without TLS offerings. */
  tls?: InstanceTls;
  /** Base URL of the BROKER_METRICS_LISTEN listener, when one is configured. */
  metricsUrl?: string;
  /**
   * Graceful stop: no new connections; background operations are handed back at once (leases released, so another
   * process continues them); requests in flight may finish for up to BROKER_SHUTDOWN_SECONDS; then the store closes.
   */
  close(): Promise<void>;
}

/** Wires the parts together, reconciles state with the engine, then starts serving. */
export async function startBroker(config: BrokerConfig, log: Logger): Promise<RunningBroker> {
  const definitions = withDashboardClients(loadCatalog(config.catalogDir, config.imagePrefix), config.sso, config.publicUrl);
  const engine = new DockerEngine();
  try {
    await engine.ping();
  } catch (error) {
    throw new Error(`cannot reach the Docker engine at ${process.env.DOCKER_HOST || '/var/run/docker.sock'}: ${(error as Error).message}`, { cause: error });
  }
  const images = new ImageBuilder(engine, path.join(PACKAGE_ROOT, 'scripts'), log, config.baseImage);
  const redisUrl = config.redisUrl ?? (await startEmbeddedRedis(engine, images, config, log));
  const store = new RedisStore(
    redisUrl,
    config.brokerId,
    new Sealer(config.encryptionKey),
    (error) => log.warn({ reason: error.message }, 'the state store (Redis) went away; requests that need it answer 503 until it is back'),
    { commandTimeoutMs: config.redisCommandTimeoutMs, onBack: () => log.info('the state store (Redis) answers again') },
  );
  store.tombstoneSeconds = config.tombstoneSeconds;
  await store.connect();
  const checks = new DependencyChecks({ redis: () => store.ping(), docker: () => engine.ping() });
  const metrics = new BrokerMetrics({ checks, listInstances: () => store.listInstances(), definitions });
  const tokens = new DashboardTokens(config.encryptionKey);
  // Known once listening (PORT=0 picks a free port); until then no request can ask for it.
  let publicUrl = config.publicUrl ?? '';
  const ssoClient = signInClient(definitions, config.sso);
  const links = new DashboardLinks({
    tokens,
    publicUrl: () => publicUrl,
    linkTtlSeconds: config.dashboardLinkSeconds,
    signsIn: (instance) => Boolean(ssoClient(instance)),
  });
  const dashboardUrl = (instance: LinkedInstance) => links.platformUrl(instance);
  const swarm = config.orchestrator === 'swarm' ? new SwarmRuntime(engine, images, config) : undefined;
  await swarm?.connect();
  const runtime = swarm ?? new DockerRuntime(engine, images, config);
  // TLS files are put into a container before its first start on one engine; on Swarm tasks mount them as secrets.
  const tls = definitions.some((definition) => definition.tls)
    ? new InstanceTls({ store, config, offerings: new Offerings(definitions), log, owner: `${hostname()}/${process.pid}/tls`, delivery: runtime })
    : undefined;
  runtime.tls = tls;
  const backupConfig = config.backup ?? loadBackupConfig({ ...process.env, BROKER_STATE_DIR: config.stateDir });
  const backups = new BackupService({
    store,
    runtime,
    offerings: new Offerings(definitions),
    backupStore: createBackupStore(backupConfig.store),
    encryptionKey: config.encryptionKey,
    log,
    owner: `${hostname()}/${process.pid}/backups`,
    timeoutSeconds: config.backupTimeoutSeconds,
    leaseMs: config.leaseSeconds * 1000,
    retention: backupConfig.retention,
    observer: backupOutcomes(store, metrics, log),
  });
  const backupSchedules = new BackupScheduler({
    store,
    backups,
    offerings: new Offerings(definitions),
    log,
    observer: metrics,
    owner: `${hostname()}/${process.pid}/backup-schedules`,
    defaultSchedule: backupConfig.schedule,
    retention: backupConfig.retention,
    deletedPassMs: (backupConfig.deletedPassSeconds ?? 3600) * 1000,
  });
  metrics.backupLastSuccess = () => store.backupLastSuccesses();
  metrics.diskUsage = async (ids) => new Map([...(await store.usage.latestDisk(ids))].map(([id, sample]) => [id, sample.usedBytes]));
  const usage = new UsageSampler({
    store,
    containers: runtime,
    offerings: new Offerings(definitions),
    log,
    owner: `${hostname()}/${process.pid}/usage`,
    settings: config,
  });
  const engineStats = new EngineStats({
    store,
    containers: runtime,
    definitions,
    log,
    owner: `${hostname()}/${process.pid}/engine-stats`,
    intervalMs: config.engineStatsSeconds * 1000,
  });
  metrics.engineStats = () => store.engineStats();
  const broker = new DockerBroker({
    config,
    definitions,
    store,
    runtime,
    log,
    portIsFree: swarm ? (port, instance) => swarm.portIsFree(port, instance) : (port) => portIsFree(config.publishIp, port),
    placement: swarm,
    backups,
    dashboardUrl,
    leases: { leaseMs: config.leaseSeconds * 1000, sweepMs: config.sweepSeconds * 1000 },
    observer: metrics,
    tls,
  });
  let recovery: RecoveryReport;
  let server: Server;
  let metricsServer: Server | undefined;
  try {
    await tls?.start();
    recovery = await recover(store, runtime, config, log);
    const app = createApp(broker, {
      username: config.username,
      password: config.password,
      bodyLimitBytes: config.bodyLimitBytes,
      log,
      listing: async () => withDiskUsage(await broker.listing(), (ids) => store.usage.latestDisk(ids), definitions),
      backups,
      backupSchedules,
      restores: broker.restores,
      rotateDashboardLink: async (instanceId) => links.linkUrl(await broker.rotateDashboardLink(instanceId)),
      restarts: broker.restarts,
      checks,
      metrics,
      dashboard: {
        service: new DashboardService(store, runtime, definitions, config),
        tokens,
        links,
        record: (instanceId) => store.getInstance(instanceId),
        sso: config.sso && new DashboardSso(config.sso, ssoClient, `${config.publicUrl}${ssoCallbackPath}`, config.encryptionKey),
        assetsDir: path.join(PACKAGE_ROOT, 'dashboard'),
        linkTtlSeconds: config.dashboardLinkSeconds,
        sessionTtlSeconds: config.dashboardSessionSeconds,
        secureCookies: config.publicUrl?.startsWith('https:') ?? false,
        backups: new DashboardBackups(backups, definitions, backupSchedules),
        restarts: broker.restarts,
        engine: new DashboardEngine({ stats: engineStats, store, advertisedHost: config.advertisedHost }),
      },
    });
    if (config.metricsListen) metricsServer = await listenForMetrics(metrics, config.metricsListen.host, config.metricsListen.port, log);
    server = await new Promise<Server>((resolve, reject) => {
      const listening = app.listen(config.listenPort, config.listenHost, () => resolve(listening));
      listening.once('error', (error: NodeJS.ErrnoException) =>
        reject(
          new Error(
            error.code === 'EADDRINUSE'
              ? `${config.listenHost}:${config.listenPort} is already in use; set PORT (or BROKER_LISTEN_HOST) to another address`
              : `cannot listen on ${config.listenHost}:${config.listenPort}: ${error.message}`,
          ),
        ),
      );
    });
  } catch (error) {
    metricsServer?.close();
    await store.close();
    throw error;
  }
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.listenPort;
  publicUrl = config.publicUrl ?? `http://${config.listenHost === '0.0.0.0' ? hostname() : config.listenHost}:${port}`;
  // The one line a person starting the broker looks for: where to point a platform, curl or a browser.
  log.info(
    { host: config.listenHost, port, publicUrl, dashboard: `${publicUrl}/dashboard`, offerings: definitions.map((definition) => definition.offering.name) },
    `ready at ${publicUrl} (dashboard: ${publicUrl}/dashboard)`,
  );
  const metricsAddress = hostPort(metricsServer);
  if (metricsAddress) log.info({ address: metricsAddress }, 'metrics listening (GET /metrics, no credentials)');
  // Only a process that serves takes part in the work: one that failed to listen never touches an operation.
  broker.startSweeping();
  const reconciler = new Reconciler({ store, runtime, offerings: broker.offerings, log }, { intervalMs: config.reconcileSeconds * 1000 });
  metrics.instancesByHealth = () => reconciler.healthByInstance();
  if (config.reconcileSeconds > 0) reconciler.start();
  backupSchedules.start();
  engineStats.start();
  const renewals = broker.tlsRenewals;
  if (tls && renewals) tls.startRenewals((instance) => renewals.renew(instance.id));
  usage.start();
  return {
    server,
    url: `http://${config.listenHost}:${port}`,
    publicUrl,
    broker,
    recovery,
    reconciler,
    metrics,
    backupSchedules,
    engineStats,
    tls,
    metricsUrl: metricsAddress && `http://${metricsAddress}`,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      metricsServer?.close();
      metricsServer?.closeAllConnections();
      await reconciler.stop();
      await backupSchedules.stop();
      await engineStats.stop();
      await tls?.stop();
      await usage.stop();
      await broker.handBack();
      // Keep-alive connections between requests would hold the server open; those in a request may finish.
      const idle = setInterval(() => server.closeIdleConnections(), 100);
      server.closeIdleConnections();
      const grace = new AbortController();
      const graceful = await Promise.race([closed.then(() => true), delay(config.shutdownSeconds * 1000, false, { signal: grace.signal }).catch(() => false)]);
      grace.abort();
      clearInterval(idle);
      if (!graceful) {
        log.warn({ seconds: config.shutdownSeconds }, 'requests still running at the end of the shutdown grace; closing them');
        server.closeAllConnections();
        await closed;
      }
      await broker.settle();
      await backups.settle();
      await store.close();
    },
  };
}

/** "host:port" a server listens on ("[v6]:port" for IPv6); undefined without one. */
function hostPort(server: Server | undefined): string | undefined {
  const address = server?.address();
  if (!address || typeof address !== 'object') return undefined;
  return address.family === 'IPv6' ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}
