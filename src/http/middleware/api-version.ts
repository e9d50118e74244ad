import type { Middleware } from 'koa';
import { preconditionFailed } from '../../osb/errors.js';
import { MIN_MINOR, parseApiVersion } from '../../osb/version.js';

/** 412 for a missing, empty or unsupported X-Broker-API-Version. */
export const apiVersion: Middleware = async (ctx, next) => {
  const header = ctx.get('X-Broker-API-Version');
  const version = parseApiVersion(header);
  if (!version) {
    throw preconditionFailed(
      header ? `X-Broker-API-Version ${header} is not supported; use 2.${MIN_MINOR} to 2.17.` : 'The X-Broker-API-Version header is required (2.13 to 2.17).',
    );
  }
  ctx.state.apiVersion = version;
  await next();
};
