import type { SsoConfig } from '../config.js';
import type { ServiceDefinition } from './definition.js';

/** Where UAA sends the browser back after a dashboard sign-in. */
export const ssoCallbackPath = '/dashboard/sso/callback';

/** Cloud Controller refuses a catalog whose offerings share a dashboard client id, so each offering has its own. */
export const dashboardClientId = (sso: SsoConfig, offeringName: string): string => `${sso.clientId}-${offeringName}`;

/**
 * The offerings with OSB's `dashboard_client` (id, secret, redirect_uri) when dashboard SSO is configured, so Cloud
 * Foundry registers the clients at its UAA when the broker is registered or updated. The secret travels in the
 * catalog answer only, as the spec has it; nothing else shows the offering objects whole.
 */
export function withDashboardClients(definitions: ServiceDefinition[], sso: SsoConfig | undefined, publicUrl: string | undefined): ServiceDefinition[] {
  if (!sso || !publicUrl) return definitions;
  return definitions.map((definition) => ({
    ...definition,
    offering: {
      ...definition.offering,
      dashboard_client: { id: dashboardClientId(sso, definition.offering.name), secret: sso.clientSecret, redirect_uri: `${publicUrl}${ssoCallbackPath}` },
    },
  }));
}

/** The dashboard client an instance's visitors sign in with: Cloud Foundry's instances only, as only its Cloud Controller can answer for them. */
export function signInClient(definitions: ServiceDefinition[], sso: SsoConfig | undefined) {
  const names = new Map(definitions.map((definition) => [definition.offering.id, definition.offering.name]));
  return (instance: { serviceId: string; context: Record<string, unknown> }): string | undefined => {
    const name = names.get(instance.serviceId);
    if (!sso || !name || instance.context.platform !== 'cloudfoundry') return undefined;
    return dashboardClientId(sso, name);
  };
}
