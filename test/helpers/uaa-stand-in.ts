import { createServer, type Server } from 'node:http';
import Provider from 'oidc-provider';

export interface DashboardClient {
  id: string;
  secret: string;
  redirect_uri: string;
}

export interface StandIn {
  url: string;
  close(): Promise<void>;
}

/**
 * A stand-in for Cloud Foundry's UAA, which cannot run here: oidc-provider, a certified OpenID Provider, on
 * loopback, with the dashboard clients Cloud Controller would register at UAA from the broker's catalog. Its
 * development login form signs in any user name.
 */
export async function startUaaStandIn(port: number, clients: DashboardClient[]): Promise<StandIn> {
  const url = `http://127.0.0.1:${port}`;
  const provider = new Provider(url, {
    clients: clients.map((client) => ({
      client_id: client.id,
      client_secret: client.secret,
      redirect_uris: [client.redirect_uri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    scopes: ['openid', 'cloud_controller_service_permissions.read'],
    findAccount: (_ctx: unknown, sub: string) => ({ accountId: sub, claims: () => ({ sub }) }),
    cookies: { keys: ['a test-only cookie key'] },
  });
  return listen(createServer(provider.callback()), port, url);
}

export type Permissions = { read: boolean; manage: boolean };

/**
 * A stand-in for Cloud Controller's GET /v3/service_instances/:guid/permissions, as no Cloud Foundry runs here: like
 * Cloud Controller it needs the user's bearer token (it asks the provider's userinfo whose it is), then answers from
 * a table of user → instance → permissions; unknown pairs get what Cloud Controller gives them, no access.
 */
export async function startCloudControllerStandIn(port: number, issuer: string, table: Record<string, Record<string, Permissions>>) {
  const asked: { user: string; instance: string }[] = [];
  const url = `http://127.0.0.1:${port}`;
  const server = createServer((request, response) => {
    void (async () => {
      const match = /^\/v3\/service_instances\/([^/]+)\/permissions$/.exec(request.url ?? '');
      const reply = (status: number, body: unknown) => {
        response.writeHead(status, { 'content-type': 'application/json' });
        response.end(JSON.stringify(body));
      };
      if (!match || request.method !== 'GET') return reply(404, { errors: [{ title: 'CF-NotFound' }] });
      const userinfo = await fetch(`${issuer}/me`, { headers: { authorization: request.headers.authorization ?? '' } });
      if (!userinfo.ok) return reply(401, { errors: [{ title: 'CF-InvalidAuthToken' }] });
      const user = ((await userinfo.json()) as { sub: string }).sub;
      const instance = decodeURIComponent(match[1]!);
      asked.push({ user, instance });
      reply(200, table[user]?.[instance] ?? { read: false, manage: false });
    })().catch(() => response.destroy());
  });
  return { ...(await listen(server, port, url)), asked };
}

function listen(server: Server, port: number, url: string): Promise<StandIn> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () =>
      resolve({
        url,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      }),
    );
  });
}
