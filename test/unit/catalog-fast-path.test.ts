import test from 'ava';
import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createApp } from '../../src/http/app.js';
import { exactBasicHeader } from '../../src/http/middleware/basic-auth.js';
import { createLogger } from '../../src/log.js';
import type { ServiceBroker } from '../../src/osb/types.js';

// The catalog's fast path (src/http/catalog-fast-path.ts) answers in front of Koa. These tests serve one app with it
// and one without, send both the same requests and want the same answers, log lines and metrics.

const USER = 'admin';
const PASSWORD = 'secret';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;

const broker = {
  catalog: () => [
    {
      id: 's',
      name: 'svc',
      description: 'd',
      bindable: true,
      instances_retrievable: true,
      plans: [{ id: 'p', name: 'plan', description: 'd', plan_updateable: true, maintenance_info: { version: '1.0.0' } }],
    },
  ],
} as unknown as ServiceBroker;

interface Served {
  url: URL;
  /** Access-log records, without the fields that differ from run to run (time, ms). */
  lines: Array<Record<string, unknown>>;
  /** requestFinished calls, without the duration. */
  observed: Array<[string, string, number]>;
  /** Requests Koa made a context for. */
  koaRequests: number;
  close(): Promise<void>;
}

async function serve(catalogFastPath: boolean): Promise<Served> {
  const lines: Served['lines'] = [];
  const observed: Served['observed'] = [];
  const log = createLogger(
    'info',
    {},
    {
      write: (line: string) => {
        const { time, ms, ...record } = JSON.parse(line) as Record<string, unknown>;
        if (typeof time !== 'string' || typeof ms !== 'number') throw new Error(`no time or ms in ${line}`);
        lines.push(record);
      },
    },
  );
  const metrics = {
    contentType: 'text/plain',
    text: async () => '',
    requestFinished: (method: string, route: string, status: number, seconds: number) => {
      if (!(seconds >= 0)) throw new Error(`duration ${seconds}`);
      observed.push([method, route, status]);
    },
  };
  const app = createApp(broker, { username: USER, password: PASSWORD, bodyLimitBytes: 4096, log, metrics, catalogFastPath });
  const server = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const served: Served = {
    url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}`),
    lines,
    observed,
    koaRequests: 0,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  const createContext = app.createContext.bind(app);
  app.createContext = (...args) => {
    served.koaRequests++;
    return createContext(...args);
  };
  return served;
}

interface Answer {
  status: number;
  /** Every header as sent, in order, but Date. */
  headers: string[];
  body: string;
}

/** A raw request (node:http, so the headers come back in the order and spelling they were sent). */
function send(base: URL, method: string, path: string, headers: Record<string, string>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = http.request(new URL(path, base), { method, headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const raw = response.rawHeaders;
        const kept = raw.flatMap((value, index) => (index % 2 === 0 && value.toLowerCase() !== 'date' ? [`${value}: ${raw[index + 1]}`] : []));
        resolve({ status: response.statusCode!, headers: kept, body: Buffer.concat(chunks).toString('utf8') });
      });
    });
    request.on('error', reject);
    request.end();
  });
}

const platform = (extra: Record<string, string> = {}) => ({ Authorization: BASIC, 'X-Broker-API-Version': '2.17', ...extra });

test('the fast path answers the catalog as Koa does: status, headers, body, 304, 401 and 412, log lines and metrics', async (t) => {
  const fast = await serve(true);
  const koa = await serve(false);
  const etag = (await send(koa.url, 'GET', '/v2/catalog', platform())).headers.find((header) => header.startsWith('ETag: '))!.slice(6);
  const identity = Buffer.from(JSON.stringify({ user_id: 'alice' })).toString('base64');
  const cases: Array<[string, string, string, Record<string, string>]> = [
    ['GET', '/v2/catalog', 'the catalog', platform()],
    ['HEAD', '/v2/catalog', 'HEAD', platform()],
    ['GET', '/v2/catalog?x=1', 'a query string', platform()],
    ['GET', '/v2/catalog', '2.13', platform({ 'X-Broker-API-Version': '2.13' })],
    ['GET', '/v2/catalog', '2.18', platform({ 'X-Broker-API-Version': '2.18' })],
    ['GET', '/v2/catalog', 'a padded version', platform({ 'X-Broker-API-Version': ' 2.16 ' })],
    ['GET', '/v2/catalog', 'a request identity', platform({ 'X-Broker-API-Request-Identity': `req-${'x'.repeat(300)}` })],
    ['GET', '/v2/catalog', 'an originating identity', platform({ 'X-Broker-API-Originating-Identity': `cloudfoundry ${identity}` })],
    ['GET', '/v2/catalog', 'an odd originating identity', platform({ 'X-Broker-API-Originating-Identity': 'kubernetes %%%' })],
    ['GET', '/v2/catalog', 'a matching tag', platform({ 'If-None-Match': etag })],
    ['HEAD', '/v2/catalog', 'HEAD with a matching tag', platform({ 'If-None-Match': etag })],
    ['GET', '/v2/catalog', 'a weak tag in a list', platform({ 'If-None-Match': `"other", W/${etag}` })],
    ['GET', '/v2/catalog', 'a star', platform({ 'If-None-Match': '*', 'X-Broker-API-Request-Identity': 'r-304' })],
    ['GET', '/v2/catalog', 'another tag', platform({ 'If-None-Match': '"other"' })],
    ['GET', '/v2/catalog', "another version's tag", platform({ 'If-None-Match': etag, 'X-Broker-API-Version': '2.13' })],
    ['GET', '/v2/catalog', 'no credentials', { 'X-Broker-API-Version': '2.17', 'X-Broker-API-Request-Identity': 'r-401' }],
    ['GET', '/v2/catalog', 'a wrong password', platform({ Authorization: `Basic ${Buffer.from(`${USER}:secreT`).toString('base64')}` })],
    ['GET', '/v2/catalog', 'a longer password', platform({ Authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}x`).toString('base64')}` })],
    ['GET', '/v2/catalog', 'a tag without credentials', { 'X-Broker-API-Version': '2.17', 'If-None-Match': etag }],
    ['GET', '/v2/catalog', 'another spelling of the credentials', platform({ Authorization: `basic  ${BASIC.slice(6)}` })],
    ['GET', '/v2/catalog', 'no version', { Authorization: BASIC, 'X-Broker-API-Request-Identity': 'r-412' }],
    ['GET', '/v2/catalog', 'an old version', platform({ 'X-Broker-API-Version': '2.12' })],
    ['GET', '/v2/catalog', 'another major version', platform({ 'X-Broker-API-Version': '3.0' })],
    ['POST', '/v2/catalog', 'POST', platform()],
    ['GET', '/v2/catalog/', 'a trailing slash', platform()],
    ['GET', '/v2/catalogue', 'another path', platform()],
  ];
  for (const [method, path, what, headers] of cases) {
    const expected = await send(koa.url, method, path, headers);
    const answered = await send(fast.url, method, path, headers);
    t.deepEqual(answered, expected, what);
  }
  // Koa's first line and count are of the request that read the tag.
  t.is(koa.lines.length, cases.length + 1);
  t.deepEqual(fast.lines, koa.lines.slice(1));
  t.deepEqual(fast.observed, koa.observed.slice(1));
  t.true(koa.lines.some((line) => line.originatingUser === 'cloudfoundry:alice') && koa.lines.some((line) => line.originatingUser === 'kubernetes:unparsed'));
  // The first 15 never reached Koa; the 11 from "no credentials" on did.
  t.is(fast.koaRequests, 11);
  await fast.close();
  await koa.close();
});

test('the credentials check takes exactly the header clients build, and no other', (t) => {
  const matches = exactBasicHeader(USER, PASSWORD);
  t.true(matches(BASIC));
  for (const header of ['', BASIC.slice(0, -1), `${BASIC} `, `${BASIC}${BASIC}`, `basic ${BASIC.slice(6)}`, BASIC.replace(/.$/, 'x'), 'Basic', 'Bearer x']) {
    t.false(matches(header), JSON.stringify(header));
  }
  t.true(exactBasicHeader('ü', 'päss')(`Basic ${Buffer.from('ü:päss').toString('base64')}`));
});
