import { CompiledQuery, type Kysely, type Transaction } from 'kysely';
import type { Executor } from '../executor.js';
import type { DbAdapter } from './adapter.js';

// Kysely's database type is the caller's; we only run raw SQL through it.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyKysely = Kysely<any>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyTransaction = Transaction<any>;

function executor(db: AnyKysely): Executor {
  // Result plugins (CamelCasePlugin, ...) would rename our columns; our statements read raw rows.
  const raw = db.withoutPlugins();
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const result = await raw.executeQuery<R>(CompiledQuery.raw(text, [...params]));
      return [...result.rows];
    },
  };
}

/** A Kysely instance or Transaction (kysely is a peer dependency: its CompiledQuery builds raw statements). */
export const kyselyAdapter: DbAdapter<AnyKysely> = {
  library: 'Kysely',
  matches: (db) => typeof (db as Partial<AnyKysely>).executeQuery === 'function' && 'isTransaction' in db,
  executor,
  inTransaction: (db) => db.isTransaction,
  transaction: (db, fn) => db.transaction().execute((trx) => fn(executor(trx), trx)),
};
