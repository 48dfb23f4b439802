import { connect, createServer, type Socket } from 'node:net';

/** One client connection through the proxy, paired with its own connection to the target. */
export interface ProxiedConnection {
  readonly id: number;
  /** Whether the client has sent this marker (one of the proxy's `markers`) to the server. */
  saw(marker: string): boolean;
  /** True once black-holed. */
  readonly silent: boolean;
  /**
   * Stops forwarding in both directions and keeps both sockets open: no FIN, no RST, nothing ever arrives again,
   * what either side sends is dropped. This is what a NAT or firewall that forgot the connection does.
   */
  blackHole(): void;
  /** Destroys both sockets: the client sees its connection close (cleanup after a black-hole). */
  destroy(): void;
}

export interface TcpProxy {
  port: number;
  /** Every connection accepted so far, in order. */
  readonly connections: readonly ProxiedConnection[];
  /** `url` with its host and port replaced by the proxy's. */
  url(url: string): string;
  /** Stops listening and destroys every socket, black-holed ones included. */
  close(): Promise<void>;
}

/**
 * A TCP proxy on 127.0.0.1 for chaos tests. It watches each client's bytes for the given markers (for example
 * `'LISTEN '`, which tells the LISTEN connection from pool connections) and can black-hole one connection while
 * the others keep working.
 */
export async function startTcpProxy(
  target: { host: string; port: number },
  markers: readonly string[] = [],
): Promise<TcpProxy> {
  const connections: ProxiedConnection[] = [];
  const sockets = new Set<Socket>();
  // A marker can be split across two chunks: keep the last bytes of the previous chunk.
  const tailLength = Math.max(0, ...markers.map((m) => Buffer.byteLength(m) - 1));

  // allowHalfOpen: the proxy decides when a side's FIN is passed on, never Node on its own.
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = connect({ ...target, allowHalfOpen: true });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    const seen = new Set<string>();
    let tail = Buffer.alloc(0);
    let silent = false;

    const forward = (from: Socket, to: Socket, watch: boolean) => {
      from.on('data', (chunk: Buffer) => {
        if (watch && markers.length > 0) {
          const text = Buffer.concat([tail, chunk]).toString('latin1');
          for (const m of markers) if (text.includes(m)) seen.add(m);
          tail = Buffer.from(text.slice(-tailLength), 'latin1');
        }
        if (silent) return;
        // Backpressure: pause the reader until the writer drains.
        if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      from.on('end', () => {
        if (!silent) to.end();
      });
      from.on('close', () => {
        if (!silent) to.destroy();
      });
      // Errors (ECONNRESET, EPIPE) end in 'close'; the listener keeps them from being unhandled.
      from.on('error', () => undefined);
    };
    forward(client, upstream, true);
    forward(upstream, client, false);

    connections.push({
      id: connections.length + 1,
      saw: (marker) => seen.has(marker),
      get silent() {
        return silent;
      },
      blackHole() {
        silent = true;
        // Keep reading and dropping, so a paused side does not wait for a drain that never comes.
        client.resume();
        upstream.resume();
      },
      destroy() {
        client.destroy();
        upstream.destroy();
      },
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the proxy has no TCP port');

  return {
    port: address.port,
    connections,
    url(url) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(address.port);
      return u.toString();
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** Host and port of a postgres:// URL, with Postgres's default port. */
export function hostAndPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname, port: u.port === '' ? 5432 : Number(u.port) };
}
