import type { Executor } from '../executor.js';
import { rowsOf, type DbAdapter } from './adapter.js';

/** The part of a Knex instance or Knex.Transaction that pg-outbox uses. */
export interface KnexLike {
  // `never` parameters: Knex declares its own binding types; any Knex accepts what we pass.
  raw(sql: string, bindings: never): PromiseLike<unknown>;
  transaction(...args: never[]): unknown;
  isTransaction?: boolean;
  client: unknown;
}

interface KnexTransactionOwner {
  transaction(scope: (trx: KnexLike) => Promise<unknown>): Promise<unknown>;
}

/**
 * Knex binds with `?`: each `$n` of our statement becomes a `?` with its value at that place (a `$n` used twice
 * binds twice), and a literal `?` (jsonb operators) is escaped so Knex leaves it alone.
 */
export function toKnexBindings(text: string, params: readonly unknown[]): [string, unknown[]] {
  const bindings: unknown[] = [];
  const sql = text.replace(/\?|\$(\d+)/g, (match, n: string | undefined) => {
    if (n === undefined) return '\\?';
    bindings.push(params[Number(n) - 1]);
    return '?';
  });
  return [sql, bindings];
}

function executor(db: KnexLike): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const [sql, bindings] = toKnexBindings(text, params);
      return rowsOf<R>(await db.raw(sql, bindings as never), 'Knex');
    },
  };
}

/** A Knex instance (knex) or transaction (trx), with the pg client. */
export const knexAdapter: DbAdapter<KnexLike> = {
  library: 'Knex',
  matches: (db) => {
    const k = db as Partial<KnexLike>;
    return typeof k.raw === 'function' && typeof k.transaction === 'function' && 'client' in db;
  },
  executor,
  inTransaction: (db) => db.isTransaction === true,
  transaction: async <T>(db: KnexLike, fn: (exec: Executor, tx: unknown) => Promise<T>) =>
    (await (db as unknown as KnexTransactionOwner).transaction((trx) => fn(executor(trx), trx))) as T,
};
