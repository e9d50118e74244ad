import test, { type ExecutionContext } from 'ava';
import { Redis } from 'ioredis';
import net from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { LABEL } from '../src/docker/types.js';
import { pgQuery, stopAllWatchers, watchContainerCreations } from './helpers/engine-watch.js';
import { brokerObjects, PG, redisKeys, startTestBroker, uniqueId, type TestBroker } from './helpers/env.js';
import { provisionBody, type Reply } from './helpers/osb-client.js';
import { storedRecord, waitUntil } from './helpers/wait.js';

// Port block 6 (41600-41699). The tests run side by side on one broker, each with its own instance ids.

let env: TestBroker;
test.before(async () => {
  env = await startTestBroker(6);
});
test.after.always(async () => {
  stopAllWatchers();
  await env?.stop();
});

const instanceLabels = (id: string) => ({ [LABEL.broker]: env.config.brokerId, [LABEL.instance]: id });

async function instanceObjects(id: string) {
  const { containers, volumes } = await brokerObjects(env.config.brokerId);
  return {
    containers: containers.filter((container) => container.labels[LABEL.instance] === id),
    volumes: volumes.filter((volume) => volume.labels[LABEL.instance] === id),
  };
}

/** The port reservation keys held by instance `id`. */
async function portKeysOf(id: string): Promise<string[]> {
  const redis = new Redis(env.redisUrl);
  try {
    const keys = await redis.keys(`osb:${env.config.brokerId}:port:*`);
    const holders = keys.length ? await redis.mget(...keys) : [];
    return keys.filter((_, index) => holders[index] === id);
  } finally {
    redis.disconnect();
  }
}

async function deprovisionAndWait(t: ExecutionContext, id: string, planId = PG.small): Promise<void> {
  const deleting = await env.client.deprovision(id, PG.service, planId);
  t.is(deleting.status, 202, JSON.stringify(deleting.body));
  t.is((await env.client.waitForInstance(id, deleting.body.operation, 60_000)).body.state, 'succeeded');
}

/** Identical provision requests at once: one operation, one container, whatever the interleaving. */
const identicalProvisions = test.macro({
  async exec(t, count: number) {
    const id = uniqueId();
    const creations = await watchContainerCreations(instanceLabels(id));
    const body = provisionBody(PG.service, PG.small);
    const replies = await Promise.all(Array.from({ length: count }, () => env.client.provision(id, body)));

    const accepted = replies.filter((reply) => reply.status === 202);
    t.true(accepted.length >= 1, statuses(replies));
    // 202 with the one operation while it runs; 200 only if it had already finished (it takes seconds).
    t.true(
      replies.every((reply) => reply.status === 202 || reply.status === 200),
      statuses(replies),
    );
    const operations = new Set(accepted.map((reply) => reply.body.operation));
    t.is(operations.size, 1, `several operations: ${[...operations].join(', ')}`);
    const [operation] = operations;

    const done = await env.client.waitForInstance(id, operation, 60_000);
    t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
    t.is((await creations.stop()).length, 1, 'exactly one container was ever created for the instance');
    const objects = await instanceObjects(id);
    t.is(objects.containers.length, 1);
    t.is(objects.volumes.length, 1);
    t.is((await portKeysOf(id)).length, 1);

    // Asked again once ready: 200, nothing new.
    t.is((await env.client.provision(id, body)).status, 200);
    await deprovisionAndWait(t, id);
  },
  title: (_provided, count) => `${String(count)} concurrent identical provisions share one operation and one container`,
});

test(identicalProvisions, 2);
test(identicalProvisions, 5);

test('two concurrent provisions of one id with different plans: one 202, one 409', async (t) => {
  const id = uniqueId();
  const creations = await watchContainerCreations(instanceLabels(id));
  const [small, medium] = await Promise.all([
    env.client.provision(id, provisionBody(PG.service, PG.small)),
    env.client.provision(id, provisionBody(PG.service, PG.medium)),
  ]);
  t.deepEqual([small.status, medium.status].sort(), [202, 409], statuses([small, medium]));
  const winner = small.status === 202 ? small : medium;
  const loser = small.status === 202 ? medium : small;
  const winningPlan = winner === small ? PG.small : PG.medium;
  t.is(loser.body.error, 'Conflict');

  t.is((await env.client.waitForInstance(id, winner.body.operation, 60_000)).body.state, 'succeeded');
  t.is((await env.client.request('GET', `/v2/service_instances/${id}`)).body.plan_id, winningPlan);
  t.is((await creations.stop()).length, 1);
  const [container] = (await instanceObjects(id)).containers;
  t.is(container?.labels[LABEL.plan], winningPlan);
  await deprovisionAndWait(t, id, winningPlan);
});

test('concurrent binds of distinct ids on one instance all succeed with distinct users', async (t) => {
  const id = uniqueId();
  const accepted = await env.client.provision(id, provisionBody(PG.service, PG.small));
  t.is((await env.client.waitForInstance(id, accepted.body.operation, 60_000)).body.state, 'succeeded');

  const bindingIds = Array.from({ length: 6 }, (_, index) => `b-${index}`);
  const bindBody = (app: string) => ({ service_id: PG.service, plan_id: PG.small, bind_resource: { app_guid: app } });
  const replies = await Promise.all(bindingIds.map((bindingId) => env.client.bind(id, bindingId, bindBody(`app-${bindingId}`))));
  t.deepEqual(
    replies.map((reply) => reply.status),
    bindingIds.map(() => 201),
    statuses(replies),
  );
  const credentials = replies.map((reply) => reply.body.credentials);
  t.is(new Set(credentials.map((c) => c.username)).size, bindingIds.length, 'distinct users');
  t.is(new Set(credentials.map((c) => c.password)).size, bindingIds.length, 'distinct passwords');
  for (const c of credentials) {
    t.is((await pgQuery(c.uri, 'SELECT session_user AS who')).rows[0].who, c.username);
  }

  // The same binding asked for several times at once: created once, the same credentials for everyone.
  const again = await Promise.all([1, 2, 3].map(() => env.client.bind(id, 'b-same', bindBody('app-same'))));
  t.deepEqual(again.map((reply) => reply.status).sort(), [200, 200, 201], statuses(again));
  t.is(new Set(again.map((reply) => JSON.stringify(reply.body.credentials))).size, 1);

  await deprovisionAndWait(t, id);
  t.deepEqual(await redisKeys(env.redisUrl, `osb:${env.config.brokerId}:binding:${id}:*`), []);
});

test('a PATCH while provisioning answers 422 ConcurrencyError', async (t) => {
  const id = uniqueId();
  const accepted = await env.client.provision(id, provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202);
  const patch = (body: Record<string, unknown>) => env.client.request('PATCH', `/v2/service_instances/${id}?accepts_incomplete=true`, body);
  const planChange = await patch({ service_id: PG.service, plan_id: PG.medium });
  const parameterChange = await patch({ service_id: PG.service, parameters: { log_min_duration_statement: 250 } });
  for (const reply of [planChange, parameterChange]) {
    t.is(reply.status, 422, JSON.stringify(reply.body));
    t.is(reply.body.error, 'ConcurrencyError');
  }
  // The provision went on, untouched.
  const done = await env.client.waitForInstance(id, accepted.body.operation, 60_000);
  t.is(done.body.state, 'succeeded');
  t.is((await env.client.request('GET', `/v2/service_instances/${id}`)).body.plan_id, PG.small);
  await deprovisionAndWait(t, id);
});

/** What a DELETE during provisioning left behind, once its operation is over: one object to compare. */
async function afterDeleteDuringProvision(id: string, moment: 'right after the 202' | 'once the port is reserved' | 'once the container runs') {
  const accepted = await env.client.provision(id, provisionBody(PG.service, PG.small));
  if (accepted.status !== 202) throw new Error(`provision answered ${accepted.status} ${JSON.stringify(accepted.body)}`);
  const provisionOperation = accepted.body.operation as string;
  if (moment === 'once the port is reserved') {
    await waitUntil('the port reservation', async () => (await portKeysOf(id)).length > 0, 30_000, 5);
  } else if (moment === 'once the container runs') {
    await waitUntil('the container to run', async () => (await instanceObjects(id)).containers.some((c) => c.running), 30_000, 20);
  }
  const deleting = await env.client.deprovision(id, PG.service, PG.small);
  if (deleting.status !== 202) throw new Error(`deprovision answered ${deleting.status} ${JSON.stringify(deleting.body)}`);
  const deleted = await env.client.waitForInstance(id, deleting.body.operation, 60_000);
  // A deprovision only starts once the provision it cancelled has let go, so both are over now.
  const provision = await env.client.lastOperation(id, provisionOperation);
  return {
    deprovision: deleted.body,
    provision: provision.body,
    objects: await instanceObjects(id),
    portKeys: await portKeysOf(id),
    storedState: (await storedRecord(env.redisUrl, env.config.brokerId, 'instance', id))?.state,
    // The instance's latest operation is the deprovision; the instance is gone for the platform.
    latestOperationIsTheDeprovision: isDeepStrictEqual((await env.client.lastOperation(id)).body, deleted.body),
    fetchStatus: (await env.client.request('GET', `/v2/service_instances/${id}`)).status,
    deleteAgainStatus: (await env.client.deprovision(id, PG.service, PG.small)).status,
  };
}

const nothingLeft = {
  deprovision: { state: 'succeeded', description: 'The service instance is deleted.' },
  // The creation stopped where it was (PostgreSQL takes a second to start, so it never gets to finish).
  provision: { state: 'failed', description: 'Provisioning was cancelled by a deprovision request.' },
  objects: { containers: [], volumes: [] },
  portKeys: [],
  storedState: 'deleted',
  latestOperationIsTheDeprovision: true,
  fetchStatus: 404,
  deleteAgainStatus: 410,
};

for (const moment of ['once the port is reserved', 'once the container runs'] as const) {
  test(`a DELETE ${moment} stops the provision and leaves nothing behind`, async (t) => {
    const observed = await afterDeleteDuringProvision(uniqueId(), moment);
    // Once the container runs, a loaded machine may finish the last steps before the DELETE is taken: the
    // provision then succeeded, and the deprovision removes it all the same.
    const finishedFirst = { state: 'succeeded', description: 'The service instance is ready.' };
    const expected =
      moment === 'once the container runs' && isDeepStrictEqual(observed.provision, finishedFirst) ? { ...nothingLeft, provision: finishedFirst } : nothingLeft;
    t.deepEqual(observed, expected);
  });
}

test('a DELETE right after the 202 stops the provision and leaves nothing behind (3 rounds of 6 instances at once)', async (t) => {
  // One at a time the broker usually wins the race against the DELETE; a few at once, as a platform sends them, it
  // often does not: so several rounds.
  for (let round = 1; round <= 3; round++) {
    const ids = Array.from({ length: 6 }, () => uniqueId());
    const outcomes = await Promise.allSettled(ids.map((id) => afterDeleteDuringProvision(id, 'right after the 202')));
    const observed = Object.fromEntries(
      ids.map((id, index) => {
        const outcome = outcomes[index]!;
        return [id, outcome.status === 'fulfilled' ? outcome.value : String(outcome.reason)];
      }),
    );
    t.deepEqual(observed, Object.fromEntries(ids.map((id) => [id, nothingLeft])), `round ${round}`);
  }
});

test('a host port another process takes between the check and the start is given up for another one', async (t) => {
  const id = uniqueId();
  const accepted = await env.client.provision(id, provisionBody(PG.service, PG.small));
  t.is(accepted.status, 202);
  // Take the reserved port the moment it is reserved: before the container starts (that takes tens of ms more).
  const reservation = await waitUntil('the port reservation', async () => (await portKeysOf(id))[0], 30_000, 1);
  const squattedPort = Number(reservation.slice(reservation.lastIndexOf(':') + 1));
  const squatter = net.createServer();
  await new Promise<void>((resolve, reject) => {
    squatter.once('error', reject);
    squatter.listen(squattedPort, env.config.publishIp, () => resolve());
  });
  try {
    const done = await env.client.waitForInstance(id, accepted.body.operation, 60_000);
    t.is(done.body.state, 'succeeded', JSON.stringify(done.body));
    const [container] = (await instanceObjects(id)).containers;
    t.truthy(container?.hostPort);
    t.not(container!.hostPort, squattedPort);
    // Exactly one reservation, for the port in use: the given-up one is released.
    t.deepEqual(await portKeysOf(id), [`osb:${env.config.brokerId}:port:${container!.hostPort}`]);
  } finally {
    await new Promise((resolve) => squatter.close(resolve));
  }
  await deprovisionAndWait(t, id);
  t.deepEqual(await portKeysOf(id), []);
});

function statuses(replies: Reply[]): string {
  return replies.map((reply) => `${reply.status} ${JSON.stringify(reply.body)}`).join('\n');
}
