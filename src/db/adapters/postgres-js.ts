import type { Executor } from '../executor.js';
import type { DbAdapter } from './adapter.js';

/** The part of a postgres.js `sql` (or the `sql` of sql.begin, or a reserved connection) that pg-outbox uses. */
export interface PostgresJsLike {
  unsafe(query: string, parameters?: never[]): PromiseLike<unknown>;
  typed(value: never, type: number): unknown;
}

interface SqlLike extends PostgresJsLike {
  begin(fn: (sql: PostgresJsLike) => Promise<unknown>): Promise<unknown>;
}

const TEXT_OID = 25;

function executor(sql: PostgresJsLike): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      // postgres.js serializes a parameter by the type the server infers for it: a JSON text bound to $n::jsonb
      // would be stringified again (a JSON string instead of the object). Our statements cast every parameter,
      // so strings are sent as text and the cast parses them, as with pg.
      const values = params.map((p) => (typeof p === 'string' ? sql.typed(p as never, TEXT_OID) : p));
      const rows = (await sql.unsafe(text, values as never[])) as R[];
      return [...rows];
    },
  };
}

/** postgres.js: the `sql` of a transaction (and only it) has savepoint(); the main `sql` and a reserved one begin(). */
export const postgresJsAdapter: DbAdapter<PostgresJsLike> = {
  library: 'postgres.js',
  matches: (db) => {
    const s = db as Partial<PostgresJsLike>;
    return typeof s.unsafe === 'function' && typeof s.typed === 'function';
  },
  executor,
  inTransaction: (db) => typeof (db as { savepoint?: unknown }).savepoint === 'function',
  async transaction<T>(db: PostgresJsLike, fn: (exec: Executor, tx: unknown) => Promise<T>) {
    return (await (db as SqlLike).begin((tx) => fn(executor(tx), tx))) as T;
  },
};
