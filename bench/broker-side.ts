/** The broker under test, in-process, spoken to over HTTP like a platform would. */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig } from '../src/config.js';
import { createLogger, logDestination } from '../src/log.js';
import { startBroker } from '../src/server.js';
import { PG, removeEverything, startTestRedis } from '../test/helpers/env.js';
import { OsbClient, provisionBody, type Reply } from '../test/helpers/osb-client.js';

const POLL_MS = 50;

/** Short names for the progress descriptions the broker writes into last_operation while provisioning. */
const PHASES: Array<[RegExp, string]> = [
  [/^Provisioning requested/, 'accept+port'],
  [/^Creating the container/, 'create+start'],
  [/^Starting /, 'ready'],
  [/^Setting up/, 'setup'],
  [/^Checking /, 'login'],
];
const phaseOf = (description: string) => PHASES.find(([pattern]) => pattern.test(description))?.[1] ?? description;

export interface BrokerProvision {
  id: string;
  /** Milliseconds from the PUT to the first last_operation answer "succeeded". */
  totalMs: number;
  /** Approximate time per phase, from when each progress description was first seen (50 ms polling). */
  phases: Record<string, number>;
}

/** Which offering and plan to provision; PostgreSQL small unless said otherwise. */
export interface OfferingChoice {
  serviceId: string;
  planId: string;
  parameters?: Record<string, unknown>;
}
const POSTGRES: OfferingChoice = { serviceId: PG.service, planId: PG.small, parameters: { database: 'app' } };

export interface BrokerSide {
  provision(offering?: OfferingChoice): Promise<BrokerProvision>;
  deprovision(id: string, offering?: OfferingChoice): Promise<void>;
  /** Synchronous bind (no accepts_incomplete); returns its latency in ms. */
  bind(instanceId: string, bindingId: string): Promise<number>;
  unbind(instanceId: string, bindingId: string): Promise<void>;
  /** A fresh dashboard link (with its access token), as a platform gets it when it fetches the instance. */
  dashboardUrl(instanceId: string): Promise<string>;
  /** The instance's container name on the engine. */
  containerName(instanceId: string): string;
  /** The broker's address, and the headers a platform sends with every request (credentials, API version). */
  url: string;
  platformHeaders: Record<string, string>;
  /** Stops the broker and removes everything it made (by label, as a last resort), then its Redis. */
  stop(): Promise<void>;
}

export async function startBrokerSide(): Promise<BrokerSide> {
  // Own Redis, own broker id (labels, Redis keys) and a port range no test uses (tests: 41000 + block * 100, blocks below 70).
  const redis = await startTestRedis();
  const brokerId = `bench-${randomBytes(4).toString('hex')}`;
  const password = randomBytes(16).toString('hex');
  const config = loadConfig({ ...process.env, PORT: '0', REDIS_URL: redis.url, BROKER_ID: brokerId, BROKER_PORT_RANGE: '49000-49099', LOG_LEVEL: 'silent' });
  // It logs as in production (a JSON line per request, through the same destination), only to /dev/null.
  const log = createLogger('info', {}, logDestination('/dev/null'));
  const running = await startBroker({ ...config, password, encryptionKey: randomBytes(32) }, log).catch(async (error) => {
    await redis.stop();
    throw error;
  });
  const client = new OsbClient(running.url, config.username, password);
  const bindBody = { service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: 'bench-app' } };

  return {
    async provision(offering = POSTGRES) {
      const id = `bench-${randomBytes(6).toString('hex')}`;
      const started = performance.now();
      // Each phase lasts from its first sighting to the next one's; the first starts at the PUT.
      const seen: Array<[string, number]> = [['accept+port', started]];
      const accepted = await client.provision(
        id,
        provisionBody(offering.serviceId, offering.planId, offering.parameters ? { parameters: offering.parameters } : {}),
      );
      if (accepted.status !== 202) throw new Error(`provision answered ${accepted.status}: ${JSON.stringify(accepted.body)}`);
      const done = await waitForOperation(client, id, accepted.body.operation, (description) => {
        const phase = phaseOf(description);
        if (!seen.some(([name]) => name === phase)) seen.push([phase, performance.now()]);
      });
      const finished = performance.now();
      if (done.body.state !== 'succeeded') throw new Error(`provision ended ${JSON.stringify(done.body)}`);
      const phases = Object.fromEntries(seen.map(([name, at], index) => [name, (seen[index + 1]?.[1] ?? finished) - at]));
      return { id, totalMs: finished - started, phases };
    },

    async deprovision(id, offering = POSTGRES) {
      const deleting = await client.deprovision(id, offering.serviceId, offering.planId);
      if (deleting.status !== 202) throw new Error(`deprovision answered ${deleting.status}: ${JSON.stringify(deleting.body)}`);
      const done = await waitForOperation(client, id, deleting.body.operation);
      if (done.body.state !== 'succeeded') throw new Error(`deprovision ended ${JSON.stringify(done.body)}`);
    },

    async bind(instanceId, bindingId) {
      const started = performance.now();
      const reply = await client.bind(instanceId, bindingId, bindBody);
      const elapsed = performance.now() - started;
      if (reply.status !== 201) throw new Error(`bind answered ${reply.status}: ${JSON.stringify(reply.body)}`);
      return elapsed;
    },

    async unbind(instanceId, bindingId) {
      const reply = await client.unbind(instanceId, bindingId, PG.service, PG.small);
      if (reply.status !== 200) throw new Error(`unbind answered ${reply.status}: ${JSON.stringify(reply.body)}`);
    },

    async dashboardUrl(instanceId) {
      const reply = await client.request('GET', `/v2/service_instances/${instanceId}`);
      if (reply.status !== 200) throw new Error(`fetch instance answered ${reply.status}`);
      return reply.body.dashboard_url as string;
    },

    containerName: (instanceId) => `osb-${brokerId}-${instanceId}`,

    url: running.url,
    platformHeaders: { Authorization: client.basic, 'X-Broker-API-Version': '2.17' },

    async stop() {
      try {
        await running.close();
      } finally {
        try {
          await removeEverything(brokerId);
        } finally {
          await redis.stop();
        }
      }
    },
  };
}

/** Polls last_operation every 50 ms (so polling adds little) until it leaves "in progress". */
async function waitForOperation(
  client: OsbClient,
  id: string,
  operation: string | undefined,
  onProgress: (description: string) => void = () => {},
): Promise<Reply> {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const reply = await client.lastOperation(id, operation);
    if (reply.status !== 200 || reply.body.state !== 'in progress') return reply;
    onProgress(reply.body.description);
    if (Date.now() > deadline) throw new Error(`instance ${id} still in progress after 3 minutes: ${reply.body.description}`);
    await sleep(POLL_MS);
  }
}
