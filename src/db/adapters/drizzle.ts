import { OutboxError } from '../../errors.js';
import type { Executor } from '../executor.js';
import { rowsOf, type DbAdapter } from './adapter.js';

/** The part of a Drizzle database or transaction (any Postgres driver) that pg-outbox uses. */
export interface DrizzleLike {
  execute(query: never): PromiseLike<unknown>;
  transaction(...args: never[]): unknown;
}

interface DrizzleSql {
  raw(text: string): unknown;
  param(value: unknown): unknown;
  join(chunks: unknown[]): unknown;
}

let drizzleSql: Promise<DrizzleSql> | undefined;

/** drizzle-orm's sql builder, loaded when a Drizzle object first runs a statement. */
function loadSql(): Promise<DrizzleSql> {
  drizzleSql ??= import('drizzle-orm').then(
    (module) => module.sql as unknown as DrizzleSql,
    (error: unknown) => {
      drizzleSql = undefined;
      throw new OutboxError(
        'OUTBOX_MISSING_DEPENDENCY',
        'A Drizzle database was passed but drizzle-orm cannot be imported from pg-outbox: install drizzle-orm',
        { cause: error },
      );
    },
  );
  return drizzleSql;
}

/** Our `$n` placeholders as Drizzle chunks: the text between them raw, each `$n` its parameter. */
function toDrizzleSql(sql: DrizzleSql, text: string, params: readonly unknown[]): unknown {
  const parts = text.split(/\$(\d+)/);
  const chunks = parts.map((part, i) => (i % 2 === 0 ? sql.raw(part) : sql.param(params[Number(part) - 1])));
  return sql.join(chunks);
}

function executor(db: DrizzleLike): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const query = toDrizzleSql(await loadSql(), text, params);
      // node-postgres returns { rows }, postgres.js an array of rows.
      return rowsOf<R>(await db.execute(query as never), 'Drizzle');
    },
  };
}

/** A Drizzle database (drizzle(pool)) or the tx of db.transaction(); transactions have rollback(). */
export const drizzleAdapter: DbAdapter<DrizzleLike> = {
  library: 'Drizzle',
  matches: (db) => {
    const d = db as Partial<DrizzleLike>;
    // dialect and session are Drizzle's internals, present at run time only: they tell it from other ORMs.
    return (
      typeof d.execute === 'function' &&
      typeof d.transaction === 'function' &&
      'dialect' in db &&
      'session' in db
    );
  },
  executor,
  inTransaction: (db) => typeof (db as { rollback?: unknown }).rollback === 'function',
  async transaction<T>(db: DrizzleLike, fn: (exec: Executor, tx: unknown) => Promise<T>) {
    const owner = db as unknown as {
      transaction(run: (tx: DrizzleLike) => Promise<unknown>): Promise<unknown>;
    };
    return (await owner.transaction((tx) => fn(executor(tx), tx))) as T;
  },
};
