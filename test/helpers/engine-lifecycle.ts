import type { ExecutionContext } from 'ava';
import { brokerObjects, redisKeys, uniqueId, type TestBroker } from './env.js';
import { provisionBody } from './osb-client.js';

export type Creds = Record<string, any>;

/** How a test speaks to one engine with the real client library. */
export interface EngineClient {
  /** Stores value under key through these credentials. */
  write(credentials: Creds, key: string, value: string): Promise<void>;
  /** Reads what is stored under key through these credentials. */
  read(credentials: Creds, key: string): Promise<string | undefined>;
  /** Resolves when these credentials are accepted, rejects when they are refused. */
  login(credentials: Creds): Promise<void>;
}

export interface Offering {
  serviceId: string;
  planId: string;
  parameters?: Record<string, unknown>;
}

/**
 * The lifecycle every engine with per-binding users must pass: provision, bind twice, write through one binding
 * and read through the other, unbind one (refused from then on, the other still works), deprovision (nothing left).
 * Returns the two bindings' credentials for engine-specific checks made before the end.
 */
export async function engineLifecycle(
  t: ExecutionContext,
  env: TestBroker,
  offering: Offering,
  engine: EngineClient,
  extraChecks: (credentials: [Creds, Creds]) => Promise<void> = async () => {},
): Promise<void> {
  const { client, config } = env;
  const id = uniqueId();
  const accepted = await client.provision(
    id,
    provisionBody(offering.serviceId, offering.planId, offering.parameters ? { parameters: offering.parameters } : {}),
  );
  t.is(accepted.status, 202, JSON.stringify(accepted.body));
  const ready = await client.waitForInstance(id, accepted.body.operation);
  t.is(ready.body.state, 'succeeded', ready.body.description);

  const bindBody = { service_id: offering.serviceId, plan_id: offering.planId };
  const first = await client.bind(id, 'first', { ...bindBody, bind_resource: { app_guid: 'app-1' } });
  const second = await client.bind(id, 'second', { ...bindBody, bind_resource: { app_guid: 'app-2' } });
  t.is(first.status, 201, JSON.stringify(first.body));
  t.is(second.status, 201, JSON.stringify(second.body));
  const a: Creds = first.body.credentials;
  const b: Creds = second.body.credentials;
  t.not(a.username, b.username, 'each binding has its own user');
  t.not(a.password, b.password);
  t.is(typeof a.port, 'number');
  t.is(a.host, config.advertisedHost);
  t.is(a.hostname, config.advertisedHost);

  await engine.write(a, 'written-by-first', 'one');
  t.is(await engine.read(b, 'written-by-first'), 'one', 'the second binding reads what the first wrote');
  await engine.write(b, 'written-by-second', 'two');
  t.is(await engine.read(a, 'written-by-second'), 'two', 'the first binding reads what the second wrote');
  await extraChecks([a, b]);

  const unbound = await client.unbind(id, 'first', offering.serviceId, offering.planId);
  t.is(unbound.status, 200, JSON.stringify(unbound.body));
  await t.throwsAsync(() => engine.login(a), undefined, 'the unbound credentials are refused');
  await t.notThrowsAsync(() => engine.login(b), 'the other binding still works');
  t.is(await engine.read(b, 'written-by-first'), 'one');

  const deleting = await client.deprovision(id, offering.serviceId, offering.planId);
  t.is(deleting.status, 202);
  t.is((await client.waitForInstance(id, deleting.body.operation)).body.state, 'succeeded');
  const { containers, volumes } = await brokerObjects(config.brokerId);
  const mine = (labels: Record<string, string>) => labels['io.osb-broker.instance'] === id;
  t.deepEqual(
    [...containers.filter((c) => mine(c.labels)).map((c) => c.name), ...volumes.filter((v) => mine(v.labels)).map((v) => v.name)],
    [],
    'no container or volume left',
  );
  const ports = await redisKeys(env.redisUrl, `osb:${config.brokerId}:port:*`);
  t.deepEqual(
    ports.filter((key) => [a.port, ...(a.extraPorts ?? [])].some((port) => key.endsWith(`:${port}`))),
    [],
    'no port reservation left',
  );
  await t.throwsAsync(() => engine.login(b), undefined, 'nothing answers after deprovision');
}
