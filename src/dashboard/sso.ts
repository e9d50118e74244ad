import { hkdfSync, timingSafeEqual } from 'node:crypto';
import * as oidc from 'openid-client';
import type { SsoConfig } from '../config.js';
import { Sealer } from '../store/sealer.js';

/** Cloud Foundry's dashboard scopes: who the user is, and Cloud Controller's answer about one instance. */
const SCOPE = 'openid cloud_controller_service_permissions.read';
/** How long a sign-in may take between the redirect to UAA and the way back. */
const FLOW_SECONDS = 600;
const FLOW_CONTEXT = 'dashboard-sign-in';

/** What the browser carries (sealed, HttpOnly) between the redirect to UAA and the callback. */
interface Flow {
  state: string;
  verifier: string;
  nonce: string;
  instanceId: string;
  clientId: string;
  expiry: number;
}

export type SignIn = { ok: true; instanceId: string } | { ok: false; status: number; title: string; text: string };

/**
 * Dashboard single sign-on as Cloud Foundry's own service dashboards do it: OAuth2 authorization code with state,
 * nonce and PKCE at the platform's UAA (discovered from its issuer), then Cloud Controller's
 * GET /v3/service_instances/:guid/permissions with the user's token. Only `manage` opens the dashboard: it can start
 * backups and download their dumps, which a read-only user (space auditor, manager) may not get from Cloud Foundry
 * either. The flow's state lives in a sealed cookie, so any replica can take the way back.
 */
export class DashboardSso {
  private server?: Promise<oidc.ServerMetadata>;
  private readonly sealer: Sealer;

  constructor(
    private readonly settings: SsoConfig,
    /** The offering's dashboard client (src/catalog/dashboard-clients.ts), or none for an instance that does not sign in. */
    private readonly clientIdOf: (instance: { serviceId: string; context: Record<string, unknown> }) => string | undefined,
    private readonly redirectUri: string,
    secret: Buffer,
  ) {
    this.sealer = new Sealer(Buffer.from(hkdfSync('sha256', secret, 'osb-docker-broker', 'dashboard sign-in', 32)));
  }

  /** The cookie a flow's state travels in; its name carries the state, so several sign-ins may run at once. */
  static cookieName(state: string): string | undefined {
    return /^[A-Za-z0-9_-]{20,100}$/.test(state) ? `osb_sso_${state}` : undefined;
  }

  static readonly flowSeconds = FLOW_SECONDS;

  /** Whether visitors of this instance sign in with UAA: Cloud Foundry's instances, when the broker has SSO. */
  appliesTo(instance: { serviceId: string; context: Record<string, unknown> }): boolean {
    return this.clientIdOf(instance) !== undefined;
  }

  /** Where to send the browser, and the sealed cookie to set first. */
  async begin(instance: { id: string; serviceId: string; context: Record<string, unknown> }): Promise<{ location: string; cookie: string; sealed: string }> {
    const clientId = this.clientIdOf(instance)!;
    const config = await this.configuration(clientId);
    const flow: Flow = {
      state: oidc.randomState(),
      verifier: oidc.randomPKCECodeVerifier(),
      nonce: oidc.randomNonce(),
      instanceId: instance.id,
      clientId,
      expiry: Date.now() + FLOW_SECONDS * 1000,
    };
    const location = oidc.buildAuthorizationUrl(config, {
      redirect_uri: this.redirectUri,
      scope: SCOPE,
      state: flow.state,
      nonce: flow.nonce,
      code_challenge: await oidc.calculatePKCECodeChallenge(flow.verifier),
      code_challenge_method: 'S256',
    });
    return { location: location.href, cookie: DashboardSso.cookieName(flow.state)!, sealed: this.sealer.seal(flow, FLOW_CONTEXT) };
  }

  /** The way back from UAA: the flow this browser started, the code exchanged, then Cloud Controller asked. */
  async finish(query: URLSearchParams, sealed: string | undefined): Promise<SignIn> {
    const refused = (text: string): SignIn => ({ ok: false, status: 400, title: 'Sign-in refused', text });
    const state = query.get('state') ?? '';
    let flow: Flow;
    try {
      flow = this.sealer.open<Flow>(sealed ?? '', FLOW_CONTEXT);
    } catch {
      return refused('This sign-in was not started in this browser, or it took too long (its state does not match). Open the dashboard link again.');
    }
    if (!sameText(flow.state, state) || flow.expiry <= Date.now()) {
      return refused('This sign-in was not started in this browser, or it took too long (its state does not match). Open the dashboard link again.');
    }
    const error = query.get('error');
    if (error) {
      return { ok: false, status: 403, title: 'Sign-in refused', text: `Cloud Foundry's login refused the sign-in (${error}). Open the dashboard link again to retry.` };
    }
    let accessToken: string;
    try {
      const config = await this.configuration(flow.clientId);
      const callback = new URL(this.redirectUri);
      callback.search = query.toString();
      const tokens = await oidc.authorizationCodeGrant(config, callback, {
        expectedState: flow.state,
        expectedNonce: flow.nonce,
        pkceCodeVerifier: flow.verifier,
        idTokenExpected: true,
      });
      accessToken = tokens.access_token;
    } catch (reason) {
      return refused(`The sign-in could not be completed: ${describe(reason)}. Open the dashboard link again.`);
    }
    const permissions = await this.permissions(flow.instanceId, accessToken);
    if ('unreachable' in permissions) {
      return { ok: false, status: 502, title: 'Cloud Controller did not answer', text: `Your permissions could not be checked (${permissions.unreachable}). Try again in a moment.` };
    }
    if (permissions.manage) return { ok: true, instanceId: flow.instanceId };
    return {
      ok: false,
      status: 403,
      title: 'Permission denied',
      text: permissions.read
        ? 'You may see this service instance in Cloud Foundry, but not manage it. Its dashboard is for users who may manage it (space developers, and org and platform admins).'
        : 'Your Cloud Foundry user has no access to this service instance. Ask a space developer of its space, or sign in as another user.',
    };
  }

  /** Cloud Controller's answer for this user and instance; its errors never carry the token. */
  private async permissions(instanceId: string, accessToken: string): Promise<{ read: boolean; manage: boolean } | { unreachable: string }> {
    const url = `${this.settings.cloudControllerUrl}/v3/service_instances/${encodeURIComponent(instanceId)}/permissions`;
    try {
      const response = await fetch(url, { headers: { authorization: `Bearer ${accessToken}`, accept: 'application/json' }, signal: AbortSignal.timeout(10_000) });
      // Cloud Controller hides instances a user may not see behind a 404.
      if (response.status === 404 || response.status === 403) return { read: false, manage: false };
      if (!response.ok) return { unreachable: `HTTP ${response.status}` };
      const body = (await response.json()) as { read?: unknown; manage?: unknown };
      return { read: body.read === true, manage: body.manage === true };
    } catch (reason) {
      return { unreachable: describe(reason) };
    }
  }

  /** UAA's metadata is discovered once (again after a failure); each offering's client gets a configuration of it. */
  private async configuration(clientId: string): Promise<oidc.Configuration> {
    const issuer = new URL(this.settings.issuer);
    const insecure = issuer.protocol === 'http:' ? { execute: [oidc.allowInsecureRequests] } : undefined;
    this.server ??= oidc.discovery(issuer, clientId, undefined, undefined, insecure).then(
      (found) => found.serverMetadata(),
      (reason: unknown) => {
        this.server = undefined;
        throw reason;
      },
    );
    const config = new oidc.Configuration(await this.server, clientId, undefined, oidc.ClientSecretBasic(this.settings.clientSecret));
    if (insecure) oidc.allowInsecureRequests(config);
    return config;
  }
}

function sameText(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

function describe(reason: unknown): string {
  const error = reason as { message?: string; error?: string; code?: string };
  return error.error ?? error.code ?? error.message ?? 'unknown error';
}
