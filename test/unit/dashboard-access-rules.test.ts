import test from 'ava';
import path from 'node:path';
import { loadConfig, PACKAGE_ROOT } from '../../src/config.js';
import { signInClient, withDashboardClients } from '../../src/catalog/dashboard-clients.js';
import { loadCatalog } from '../../src/catalog/load.js';
import { DashboardLinks } from '../../src/dashboard/links.js';
import { DashboardTokens } from '../../src/dashboard/tokens.js';
import type { InstanceRecord } from '../../src/store/records.js';

// The rules of dashboard access without a broker: SSO settings, which instances sign in, and the link checks.
const SSO = {
  BROKER_PUBLIC_URL: 'https://broker.example.com',
  BROKER_SSO_CLIENT_ID: 'osb-dash',
  BROKER_SSO_CLIENT_SECRET: 'client-secret',
  BROKER_SSO_UAA_URL: 'https://uaa.sys.example.com/oauth/token',
  BROKER_CLOUD_CONTROLLER_URL: 'https://api.sys.example.com/',
};

test('SSO settings come all four together, over https (http only to this host), with a public URL', (t) => {
  t.is(loadConfig({}).sso, undefined);
  t.deepEqual(loadConfig(SSO).sso, {
    clientId: 'osb-dash',
    clientSecret: 'client-secret',
    issuer: 'https://uaa.sys.example.com/oauth/token',
    cloudControllerUrl: 'https://api.sys.example.com',
  });
  t.throws(() => loadConfig({ ...SSO, BROKER_CLOUD_CONTROLLER_URL: '' }), { message: /missing: BROKER_CLOUD_CONTROLLER_URL/ });
  t.throws(() => loadConfig({ ...SSO, BROKER_PUBLIC_URL: '' }), { message: /needs BROKER_PUBLIC_URL/ });
  t.throws(() => loadConfig({ ...SSO, BROKER_SSO_UAA_URL: 'http://uaa.sys.example.com' }), { message: /https/ });
  t.is(loadConfig({ ...SSO, BROKER_SSO_UAA_URL: 'http://127.0.0.1:8080/uaa' }).sso?.issuer, 'http://127.0.0.1:8080/uaa');
  t.throws(() => loadConfig({ ...SSO, BROKER_SSO_CLIENT_ID: 'has spaces' }), { message: /BROKER_SSO_CLIENT_ID/ });
});

test("only Cloud Foundry's instances sign in, each offering with its own dashboard client", (t) => {
  const sso = loadConfig(SSO).sso!;
  const definitions = withDashboardClients(loadCatalog(path.join(PACKAGE_ROOT, 'catalog'), 'osb-broker/'), sso, SSO.BROKER_PUBLIC_URL);
  const redis = definitions.find((definition) => definition.offering.name === 'redis')!;
  t.deepEqual(redis.offering.dashboard_client, {
    id: 'osb-dash-redis',
    secret: 'client-secret',
    redirect_uri: 'https://broker.example.com/dashboard/sso/callback',
  });
  const clientOf = signInClient(definitions, sso);
  t.is(clientOf({ serviceId: redis.offering.id, context: { platform: 'cloudfoundry' } }), 'osb-dash-redis');
  t.is(clientOf({ serviceId: redis.offering.id, context: { platform: 'kubernetes' } }), undefined);
  t.is(clientOf({ serviceId: redis.offering.id, context: {} }), undefined);
  t.is(signInClient(definitions, undefined)({ serviceId: redis.offering.id, context: { platform: 'cloudfoundry' } }), undefined);
});

test('a lifelong link opens its instance until its secret changes or the instance is deleted; its sessions end with it', (t) => {
  const tokens = new DashboardTokens(Buffer.alloc(32, 1));
  const links = new DashboardLinks({ tokens, publicUrl: () => 'https://b', linkTtlSeconds: 60, signsIn: () => false });
  const record = { id: 'i-1', serviceId: 's', context: {}, state: 'ready', secrets: { adminPassword: 'x', dashboardLink: 'A'.repeat(43) } } as InstanceRecord;
  t.is(links.platformUrl(record), `https://b/dashboard/instances/i-1?token=${'A'.repeat(43)}`);
  const opened = links.checkLink('A'.repeat(43), 'i-1', record);
  t.true(opened.ok);
  t.false(links.checkLink('B'.repeat(43), 'i-1', record).ok);
  t.false(links.checkLink('A'.repeat(42), 'i-1', record).ok, 'a prefix is not the secret');
  t.false(links.checkLink('A'.repeat(43), 'i-1', { ...record, state: 'deleted' }).ok);
  const session = tokens.mint('session', 'i-1', 60, opened.ok ? opened.claims : {});
  t.true(links.checkSession(session, 'i-1', record).ok);
  t.deepEqual(links.checkSession(session, 'i-1', { ...record, secrets: { adminPassword: 'x', dashboardLink: 'C'.repeat(43) } }), {
    ok: false,
    reason: 'replaced',
  });
  t.deepEqual(links.checkSession(undefined, 'i-1', record), { ok: false, reason: 'missing' });
  // An instance without a secret (made by an older broker) gets the expiring signed kind, which still opens it.
  const older = { ...record, secrets: { adminPassword: 'x' } };
  const expiring = new URL(links.platformUrl(older)).searchParams.get('token')!;
  t.true(expiring.includes('.'));
  t.true(links.checkLink(expiring, 'i-1', older).ok);
  t.deepEqual(links.checkLink(expiring, 'i-2', older), { ok: false, reason: 'other-instance' });
});
