import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { InstanceListing, ListedInstance } from '../api/listing.js';
import type { Credentials, Endpoint, ServiceOffering } from '../osb/types.js';
import type { Flags } from './args.js';
import { CliError } from './errors.js';

export const DEFAULT_URL = 'http://127.0.0.1:8080';
export const PLATFORM = 'osb-docker-cli';
const REQUEST_TIMEOUT_MS = 60_000;
const FIRST_POLL_MS = 250;
const MAX_POLL_MS = 5_000;

export interface BrokerSettings {
  url: string;
  username: string;
  password: string;
  /** Where the password came from, for the message when the broker refuses it. */
  passwordSource: string;
}

/** Flags first, then OSB_BROKER_* variables, then the password file a locally started broker wrote. */
export function brokerSettings(flags: Pick<Flags, 'url' | 'user' | 'password'>, env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): BrokerSettings {
  const url = (flags.url ?? env.OSB_BROKER_URL ?? DEFAULT_URL).replace(/\/+$/, '');
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error('not http');
  } catch {
    throw new CliError(`the broker URL "${url}" is not an http(s) address (from ${flags.url ? '--url' : 'OSB_BROKER_URL'})`, 2);
  }
  const username = flags.user ?? env.OSB_BROKER_USERNAME ?? 'broker';
  if (flags.password !== undefined) return { url, username, password: flags.password, passwordSource: '--password' };
  if (env.OSB_BROKER_PASSWORD) return { url, username, password: env.OSB_BROKER_PASSWORD, passwordSource: 'OSB_BROKER_PASSWORD' };
  const file = path.resolve(cwd, env.BROKER_STATE_DIR || '.broker-state', 'secrets.json');
  if (existsSync(file)) {
    try {
      const password = (JSON.parse(readFileSync(file, 'utf8')) as { password?: unknown }).password;
      if (typeof password === 'string' && password) return { url, username, password, passwordSource: file };
    } catch (error) {
      return { url, username, password: '', passwordSource: `nowhere: ${file} could not be read (${(error as Error).message})` };
    }
  }
  return { url, username, password: '', passwordSource: `nowhere: OSB_BROKER_PASSWORD is unset and there is no ${file}` };
}

/** The fields the CLI reads from the broker's JSON answers; all optional, as error bodies carry others. */
export interface ReplyBody {
  operation?: string;
  /** A new backup's id. */
  id?: string;
  dashboard_url?: string;
  credentials?: Credentials;
  syslog_drain_url?: string;
  endpoints?: Endpoint[];
  state?: string;
  description?: string;
  error?: string;
}

export interface Reply {
  status: number;
  /** A body that is not a JSON object arrives as its text in `description`. */
  body: ReplyBody;
  retryAfterSeconds?: number;
}

export interface LastOperation {
  state: 'in progress' | 'succeeded' | 'failed' | 'gone';
  description?: string;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function whoAmI(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER || process.env.USERNAME || 'unknown';
  }
}

/** Speaks OSB to the broker as a platform does, and turns transport problems into messages a person can act on. */
export class BrokerClient {
  private readonly authorization: string;
  private readonly originatingIdentity: string;

  constructor(readonly settings: BrokerSettings) {
    this.authorization = `Basic ${Buffer.from(`${settings.username}:${settings.password}`).toString('base64')}`;
    this.originatingIdentity = `${PLATFORM} ${Buffer.from(JSON.stringify({ user_id: whoAmI() })).toString('base64')}`;
  }

  private headers(accept: string): Record<string, string> {
    return {
      Authorization: this.authorization,
      'X-Broker-API-Version': '2.17',
      'X-Broker-API-Originating-Identity': this.originatingIdentity,
      'X-Broker-API-Request-Identity': randomUUID(),
      Accept: accept,
    };
  }

  private unreachable(error: unknown): CliError {
    return new CliError(`cannot reach the broker at ${this.settings.url} (${reason(error)}); start it with \`npm start\` or set OSB_BROKER_URL`);
  }

  private refused(): CliError {
    return new CliError(
      `the broker at ${this.settings.url} refused the credentials of user "${this.settings.username}" (password from ${this.settings.passwordSource}); ` +
        "set OSB_BROKER_USERNAME and OSB_BROKER_PASSWORD (or --user and --password) to the broker's BROKER_USERNAME and BROKER_PASSWORD",
    );
  }

  /**
   * A request whose body (an upload) or answer (a download) is a stream of any size: no overall timeout and nothing
   * buffered. The answer's body is left to the caller. Refused credentials and transport failures read as request()'s.
   */
  async stream(method: string, requestPath: string, upload?: Readable): Promise<Response> {
    const headers = this.headers('application/octet-stream, application/json');
    if (upload) headers['Content-Type'] = 'application/octet-stream';
    const init: RequestInit = { method, headers };
    // Node's fetch sends a Node stream (an async iterable) as it is read, with backpressure; it asks for 'half' then.
    if (upload) Object.assign(init, { body: upload, duplex: 'half' });
    let response: Response;
    try {
      response = await fetch(`${this.settings.url}${requestPath}`, init);
    } catch (error) {
      throw this.unreachable(error);
    }
    if (response.status === 401) {
      await response.body?.cancel();
      throw this.refused();
    }
    return response;
  }

  async request(method: string, requestPath: string, body?: unknown): Promise<Reply> {
    const headers = this.headers('application/json');
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response: Response;
    try {
      response = await fetch(`${this.settings.url}${requestPath}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (error) {
      throw this.unreachable(error);
    }
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      // Not JSON: the text is kept for the message.
    }
    const replyBody: ReplyBody = parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : { description: text.trim().slice(0, 300) };
    if (response.status === 401) throw this.refused();
    const retryAfter = Number(response.headers.get('Retry-After'));
    return { status: response.status, body: replyBody, ...(Number.isFinite(retryAfter) && retryAfter > 0 ? { retryAfterSeconds: retryAfter } : {}) };
  }

  async catalog(): Promise<ServiceOffering[]> {
    const reply = await this.request('GET', '/v2/catalog');
    expect(reply, [200], 'reading the catalog');
    return (reply.body as { services?: ServiceOffering[] }).services ?? [];
  }

  /** The broker's listing (GET /broker/v1/instances): names from the platform context, ids, states, bindings. */
  async instances(): Promise<ListedInstance[]> {
    const reply = await this.request('GET', '/broker/v1/instances');
    if (reply.status === 404) {
      throw new CliError(
        `the broker at ${this.settings.url} has no listing endpoint (GET /broker/v1/instances answered 404); osb-docker needs an osb-docker-broker`,
      );
    }
    expect(reply, [200], 'listing the instances');
    return (reply.body as Partial<InstanceListing>).instances ?? [];
  }

  /**
   * Polls a last_operation endpoint until the operation ends. Each new description is handed to progress with the
   * seconds since the wait began. The first polls come quickly (250 ms, half as long again each time, up to 5 s), so
   * a short step is seen when it happens; the broker's Retry-After caps that back-off, and one longer than 5 s is
   * honoured as it is. A resource that is gone (404/410) is reported as such.
   */
  async waitFor(
    lastOperationPath: string,
    progress: (description: string, elapsedSeconds: number) => void,
    timeoutSeconds = 3600,
    tick?: (elapsedSeconds: number) => void,
  ): Promise<LastOperation> {
    const started = Date.now();
    const deadline = started + timeoutSeconds * 1000;
    let shown: string | undefined;
    let interval = FIRST_POLL_MS;
    for (;;) {
      const reply = await this.request('GET', lastOperationPath);
      if (reply.status === 404 || reply.status === 410) return { state: 'gone' };
      expect(reply, [200], 'asking for the state of the operation');
      const operation = reply.body as LastOperation;
      if (operation.description && operation.description !== shown) {
        shown = operation.description;
        if (operation.state === 'in progress') progress(operation.description, (Date.now() - started) / 1000);
      }
      if (operation.state !== 'in progress') return operation;
      if (Date.now() > deadline) {
        throw new CliError(
          `the operation is still in progress after ${timeoutSeconds} s (last: ${shown ?? 'no description'}); \`osb-docker list\` shows how it ends`,
        );
      }
      const asked = (reply.retryAfterSeconds ?? 0) * 1000;
      const wait = asked > MAX_POLL_MS ? Math.min(asked, 30_000) : Math.min(interval, asked || MAX_POLL_MS);
      interval = Math.min(interval * 1.5, MAX_POLL_MS);
      if (!tick) {
        await sleep(wait);
        continue;
      }
      // A spinner's frame every 100 ms while waiting.
      for (const end = Date.now() + wait; Date.now() < end;) {
        tick((Date.now() - started) / 1000);
        await sleep(Math.min(100, end - Date.now()));
      }
    }
  }
}

/** Throws a CliError with the broker's description unless the status is one of those expected. */
export function expect(reply: Reply, statuses: number[], doing: string): void {
  if (statuses.includes(reply.status)) return;
  throw new CliError(`the broker answered ${reply.status} when ${doing}: ${describeBody(reply.body)}`);
}

export function describeBody(body: unknown): string {
  if (body && typeof body === 'object') {
    const { error, description } = body as { error?: unknown; description?: unknown };
    if (typeof description === 'string' && description) return typeof error === 'string' ? `${description} (${error})` : description;
    if (typeof error === 'string') return error;
    return JSON.stringify(body).slice(0, 300);
  }
  return String(body).trim().slice(0, 300) || 'no description';
}

function reason(error: unknown): string {
  const failure = error as Error & { cause?: Error & { code?: string; errors?: Array<{ code?: string }> } };
  if (failure.name === 'TimeoutError') return `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
  const cause = failure.cause;
  return cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? failure.message;
}
