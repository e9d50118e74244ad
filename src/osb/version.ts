/** X-Broker-API-Version handling: accept any 2.x with x >= 13; newer fields are emitted only to clients that know them. */
export interface ApiVersion {
  major: number;
  minor: number;
}

export const MIN_MINOR = 13;

export function parseApiVersion(header: string | undefined): ApiVersion | undefined {
  const match = /^\s*(\d+)\.(\d+)\s*$/.exec(header ?? '');
  if (!match) return undefined;
  const version = { major: Number(match[1]), minor: Number(match[2]) };
  return version.major === 2 && version.minor >= MIN_MINOR ? version : undefined;
}

export const atLeast = (version: ApiVersion, minor: number) => version.major > 2 || version.minor >= minor;
