import type pg from 'pg';
import { selectStatementTimeout, setStatementTimeout } from '../sql/session.js';
import { checkoutClient } from './checkout.js';
import { pgExecutor, type Executor } from './executor.js';

/**
 * Runs fn on one pool connection under a statement_timeout of timeoutMs: a cleanup stuck behind a lock (a
 * migration, a LOCK TABLE) fails after that and is retried, instead of holding the connection without bound. Each
 * statement commits on its own (or fn runs its own transactions); the session's previous timeout is put back before the connection returns to the pool,
 * and a connection where that fails is destroyed instead.
 */
export async function withStatementTimeout<T>(
  pool: pg.Pool,
  timeoutMs: number,
  fn: (exec: Executor) => Promise<T>,
): Promise<T> {
  let broken = false;
  const onError = () => {
    broken = true;
  };
  const client = await checkoutClient(pool, onError);
  const exec = pgExecutor(client);
  try {
    const previous = await selectStatementTimeout(exec);
    await setStatementTimeout(exec, timeoutMs);
    try {
      return await fn(exec);
    } finally {
      await setStatementTimeout(exec, previous).catch(() => {
        broken = true;
      });
    }
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}
