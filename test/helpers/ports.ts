import net from 'node:net';
import { waitFor } from './outbox.js';

/** A TCP port on 127.0.0.1 nothing listens on right now, for a server the test starts. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address !== null
          ? resolve(address.port)
          : reject(new Error('no port')),
      );
    });
  });
}

/** Waits until something accepts TCP connections on 127.0.0.1:port. */
export function waitForPort(port: number, timeoutMs = 60_000): Promise<true> {
  return waitFor(
    `127.0.0.1:${port} accepting connections`,
    () =>
      new Promise<boolean>((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port });
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      }),
    timeoutMs,
    100,
  );
}
