import net from 'node:net';

/** True when nothing on this host listens on ip:port (the broker's check before reserving a host port). */
export function portIsFree(ip: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host: ip, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * True when a TCP connection through the published port reaches a live server: the server either speaks
 * first or keeps the connection open. Docker's port proxy accepts and then drops the connection when
 * nothing listens behind it, which this tells apart.
 */
export function publishedPortAnswers(host: string, port: number, holdMs = 200): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let settled = false;
    const finish = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), 5000);
    socket.once('connect', () => setTimeout(() => finish(true), holdMs));
    socket.once('data', () => finish(true));
    socket.once('close', () => finish(false));
    socket.once('error', () => finish(false));
  });
}
