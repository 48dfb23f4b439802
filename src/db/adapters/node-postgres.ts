import type pg from 'pg';
import { inPoolTransaction } from '../checkout.js';
import type { Executor } from '../executor.js';
import { rowsOf, type DbAdapter } from './adapter.js';

/** Any client with pg's `query(text, values)`: a pg PoolClient or Client, or a driver that mimics it. */
export interface QueryClient {
  query(text: string, values?: unknown[]): Promise<unknown>;
}

export function isPool(db: object): db is pg.Pool {
  return 'totalCount' in db && typeof (db as Partial<pg.Pool>).connect === 'function';
}

export function pgExecutor(client: pg.Pool | pg.ClientBase): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const result = await client.query(text, params as unknown[]);
      return result.rows as R[];
    },
  };
}

/** A pg Pool: statements run on a pooled connection each; transactions check one out. */
export const poolAdapter: DbAdapter<pg.Pool> = {
  library: 'pg Pool',
  matches: isPool,
  executor: pgExecutor,
  inTransaction: () => false,
  transaction: (pool, fn) => inPoolTransaction(pool, (client) => fn(pgExecutor(client), client)),
};

/**
 * A lent connection (a pg PoolClient or Client, or any object with pg's query method): statements run inline,
 * and it is taken to be inside the caller's transaction (once() opens a savepoint, which fails clearly if not).
 */
export const queryClientAdapter: DbAdapter<QueryClient> = {
  library: 'query(text, values) client',
  matches: (db) => typeof (db as Partial<QueryClient>).query === 'function',
  executor: (client) => ({
    async query<R>(text: string, params: readonly unknown[] = []) {
      return rowsOf<R>(await client.query(text, [...params]), 'query(text, values) client');
    },
  }),
  inTransaction: () => true,
  transaction: () => {
    throw new Error('a lent connection is a transaction already');
  },
};
