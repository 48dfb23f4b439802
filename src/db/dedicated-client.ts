import pg from 'pg';
import type { Logger } from 'pino';

/**
 * Opens a connection outside the pool, with the pool's settings, for work that holds a session: the relay's
 * advisory lock and the LISTEN connection. pg-pool only watches idle clients for errors, so this client gets its
 * own 'error' listener: a server restart must end in a reconnect, not an unhandled 'error' event.
 */
export async function connectDedicated(
  pool: pg.Pool,
  log: Logger,
  onLost: (client: pg.Client, error: Error) => void,
  queryTimeoutMs?: number,
): Promise<pg.Client> {
  // query_timeout: a query on a silent (half-open) connection fails after this instead of waiting for the kernel.
  const client = new pg.Client({
    ...pool.options,
    keepAlive: true,
    ...(queryTimeoutMs === undefined ? {} : { query_timeout: queryTimeoutMs }),
  });
  client.on('error', (error) => {
    log.warn({ err: error }, 'dedicated connection error');
    onLost(client, error);
  });
  client.on('end', () => onLost(client, new Error('connection ended')));
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => undefined);
    throw error;
  }
  return client;
}
