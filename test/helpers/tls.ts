import type { X509Certificate } from 'node:crypto';
import { isIP, connect as netConnect } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';

/**
 * The certificate a TLS port serves, trusting only `ca`: Node checks the chain and the name (a host name, sent as
 * SNI too, or an address against the certificate's IP SANs). `options` may name another server to check against.
 */
export async function servedCertificate(host: string, port: number, ca: string, options: ConnectionOptions = {}): Promise<X509Certificate> {
  const socket = tlsConnect({ host, port, ca, servername: isIP(host) ? undefined : host, ...options });
  try {
    return await new Promise<X509Certificate>((resolve, reject) =>
      socket.once('secureConnect', () => resolve(socket.getPeerX509Certificate()!)).once('error', reject),
    );
  } finally {
    socket.destroy();
  }
}

/** What a Redis plain port answers to an unauthenticated PING: its NOAUTH error, or '' when the connection just closes. */
export async function redisPlainAnswer(host: string, port: number): Promise<string> {
  const socket = netConnect({ host, port });
  let answer = '';
  socket.on('data', (data: Buffer) => {
    answer += data.toString('latin1');
    if (answer.includes('\r\n')) socket.end();
  });
  socket.write('PING\r\n');
  await new Promise<void>((resolve) => socket.once('close', () => resolve()).once('error', () => resolve()));
  return answer.trim();
}
