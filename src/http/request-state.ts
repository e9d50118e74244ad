import type { ApiVersion } from '../osb/version.js';

/** What the middleware leaves on ctx.state for the routes after it. */
declare module 'koa' {
  interface DefaultState {
    /** X-Broker-API-Request-Identity, when the platform sent one. */
    requestId?: string;
    /** "<platform>:<user>" from X-Broker-API-Originating-Identity, for the logs. */
    originatingUser?: string;
    apiVersion?: ApiVersion;
    /** The parsed JSON object body of a PUT or PATCH. */
    body?: unknown;
  }
}
