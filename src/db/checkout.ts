import type pg from 'pg';

/**
 * Checks a client out of the pool with an 'error' listener already attached.
 *
 * pg-pool removes its own listener when it hands a client out. With `await pool.connect()` the caller's listener
 * is attached a microtask later, and that is too late when the client was released and handed over inside its
 * own socket's data handler (a `pool.query()` finishing while a connect() waits): if the same socket chunk also
 * carries a FATAL message (a terminated backend, a server shutdown), the client emits 'error' with no listener
 * and the process crashes. The callback form runs synchronously at hand-over, so there is no such gap.
 */
export function checkoutClient(pool: pg.Pool, onError: (error: Error) => void): Promise<pg.PoolClient> {
  return new Promise((resolve, reject) => {
    pool.connect((error, client) => {
      if (error !== undefined && error !== null)
        return reject(error instanceof Error ? error : new Error(String(error)));
      if (client === undefined) return reject(new Error('pg-pool returned no client'));
      client.on('error', onError);
      resolve(client);
    });
  });
}

/**
 * Runs fn in a transaction on a client of the pool's own (BEGIN, COMMIT, or ROLLBACK when fn throws). A client
 * whose connection failed, or whose ROLLBACK failed, is destroyed instead of returned to the pool.
 */
export async function inPoolTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  onConnectionError: (error: Error) => void = () => undefined,
): Promise<T> {
  let broken = false;
  const onError = (error: Error) => {
    broken = true;
    onConnectionError(error);
  };
  const client = await checkoutClient(pool, onError);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {
      broken = true;
    });
    throw error;
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}
