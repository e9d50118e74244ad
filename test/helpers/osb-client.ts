import { waitFor } from '../../src/wait.js';

/** A small platform: speaks OSB to the broker like Cloud Foundry would. */
export interface Reply {
  status: number;
  body: any;
  headers: Headers;
}

export interface RequestOptions {
  version?: string | null;
  auth?: string | null;
  headers?: Record<string, string>;
  rawBody?: string;
}

export class OsbClient {
  constructor(
    readonly url: string,
    readonly username: string,
    readonly password: string,
  ) {}

  get basic() {
    return `Basic ${Buffer.from(`${this.username}:${this.password}`).toString('base64')}`;
  }

  async request(method: string, path: string, body?: unknown, options: RequestOptions = {}): Promise<Reply> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.version !== null) headers['X-Broker-API-Version'] = options.version ?? '2.17';
    if (options.auth !== null) headers.Authorization = options.auth ?? this.basic;
    const payload = options.rawBody ?? (body === undefined ? undefined : JSON.stringify(body));
    if (payload !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(`${this.url}${path}`, { method, headers, body: payload });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Leave non-JSON bodies as text so assertions show them.
    }
    return { status: response.status, body: parsed, headers: response.headers };
  }

  provision(id: string, body: Record<string, unknown>, acceptsIncomplete = true) {
    return this.request('PUT', `/v2/service_instances/${id}${acceptsIncomplete ? '?accepts_incomplete=true' : ''}`, body);
  }

  lastOperation(id: string, operation?: string) {
    return this.request('GET', `/v2/service_instances/${id}/last_operation${operation ? `?operation=${encodeURIComponent(operation)}` : ''}`);
  }

  async waitForInstance(id: string, operation?: string, timeoutMs = 180_000): Promise<Reply> {
    return this.untilFinished(() => this.lastOperation(id, operation), timeoutMs);
  }

  async waitForBinding(instanceId: string, bindingId: string, timeoutMs = 60_000): Promise<Reply> {
    return this.untilFinished(() => this.request('GET', `/v2/service_instances/${instanceId}/service_bindings/${bindingId}/last_operation`), timeoutMs);
  }

  /** Polls a last_operation request every 100 ms until it answers anything but 200 "in progress" or 503. */
  async untilFinished(get: () => Promise<Reply>, timeoutMs: number): Promise<Reply> {
    let last: Reply | undefined;
    return waitFor(
      async () => {
        last = await get();
        // A platform keeps polling through a 503 (the state store away for a moment, Retry-After); so does this.
        if (last.status === 503) return undefined;
        return last.status !== 200 || last.body.state !== 'in progress' ? last : undefined;
      },
      { intervalMs: 100, timeoutMs, onTimeout: () => new Error(`operation still in progress after ${timeoutMs} ms: ${JSON.stringify(last?.body)}`) },
    );
  }

  deprovision(id: string, serviceId: string, planId: string, acceptsIncomplete = true) {
    return this.request(
      'DELETE',
      `/v2/service_instances/${id}?service_id=${serviceId}&plan_id=${planId}${acceptsIncomplete ? '&accepts_incomplete=true' : ''}`,
    );
  }

  bind(instanceId: string, bindingId: string, body: Record<string, unknown>, acceptsIncomplete = false) {
    return this.request('PUT', `/v2/service_instances/${instanceId}/service_bindings/${bindingId}${acceptsIncomplete ? '?accepts_incomplete=true' : ''}`, body);
  }

  unbind(instanceId: string, bindingId: string, serviceId: string, planId: string, acceptsIncomplete = false) {
    return this.request(
      'DELETE',
      `/v2/service_instances/${instanceId}/service_bindings/${bindingId}?service_id=${serviceId}&plan_id=${planId}${acceptsIncomplete ? '&accepts_incomplete=true' : ''}`,
    );
  }
}

export const provisionBody = (serviceId: string, planId: string, extra: Record<string, unknown> = {}) => ({
  service_id: serviceId,
  plan_id: planId,
  organization_guid: 'org-1',
  space_guid: 'space-1',
  context: { platform: 'cloudfoundry', instance_name: 'my-db' },
  ...extra,
});
