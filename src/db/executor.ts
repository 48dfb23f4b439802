import type pg from 'pg';
import { OutboxError } from '../errors.js';
import type { TransactionOptions } from './adapters/adapter.js';
import type { DrizzleLike } from './adapters/drizzle.js';
import { adapterFor } from './adapters/index.js';
import type { KnexLike } from './adapters/knex.js';
import type { AnyKysely, AnyTransaction } from './adapters/kysely.js';
import type { QueryClient } from './adapters/node-postgres.js';
import type { PostgresJsLike } from './adapters/postgres-js.js';
import type { PrismaLike } from './adapters/prisma.js';
import { isNoActiveTransaction } from './pg-errors.js';

export { pgExecutor } from './adapters/node-postgres.js';

/**
 * What callers may pass as `db`: a pg Pool, PoolClient or Client; a Kysely instance or Transaction; a Drizzle
 * database or transaction; a Knex instance or transaction; a PrismaClient (driver adapter) or its interactive
 * transaction client; a TypeORM DataSource, EntityManager or QueryRunner; a postgres.js `sql` or the `sql` of
 * sql.begin(); or any object with pg's `query(text, values)` returning rows or `{ rows }`.
 */
export type Queryable =
  | pg.Pool
  | pg.PoolClient
  | pg.Client
  | AnyKysely
  | AnyTransaction
  | DrizzleLike
  | KnexLike
  | PrismaLike
  | PostgresJsLike
  | QueryClient;

/** One way to run a statement, whatever the caller handed us. */
export interface Executor {
  query<R>(text: string, params?: readonly unknown[]): Promise<R[]>;
}

/** The first parameter of the callback a transaction method takes, whichever argument that callback is. */
type CallbackTx<F> = F extends (...args: infer A) => unknown
  ? Extract<A[number], (tx: never) => unknown> extends (tx: infer T) => unknown
    ? T
    : never
  : never;

/**
 * The transaction handed to once() callbacks and to transactional handlers: the library's own transaction
 * object (a pg PoolClient for a Pool, a Kysely Transaction, Drizzle's tx, Knex's trx, Prisma's transaction
 * client, TypeORM's EntityManager, postgres.js's transaction `sql`), or db itself when it is a transaction.
 */
export type TransactionOf<D> = D extends AnyKysely
  ? AnyTransaction
  : D extends pg.Pool
    ? pg.PoolClient
    : D extends { $transaction: infer F }
      ? CallbackTx<F>
      : D extends { begin: infer F; unsafe: unknown }
        ? CallbackTx<F>
        : D extends { transaction: infer F }
          ? CallbackTx<F>
          : D;

function invalid(db: unknown): OutboxError {
  return new OutboxError(
    'OUTBOX_INVALID_EXECUTOR',
    'Expected a pg Pool or client, a Kysely, Drizzle, Knex, Prisma, TypeORM or postgres.js object, or an object ' +
      'with query(text, values), as the first argument',
    { value: typeof db },
  );
}

function adapterOf(db: unknown) {
  const adapter = adapterFor(db);
  if (adapter === undefined) throw invalid(db);
  return adapter;
}

/** Wraps the caller's connection. Statements run inline: never BEGIN/COMMIT on a lent connection. */
export function toExecutor(db: Queryable): Executor {
  return adapterOf(db).executor(db);
}

async function inSavepoint<T>(exec: Executor, fn: () => Promise<T>): Promise<T> {
  try {
    await exec.query('SAVEPOINT pg_outbox');
  } catch (error) {
    if (isNoActiveTransaction(error)) {
      throw new OutboxError(
        'OUTBOX_NOT_IN_TRANSACTION',
        'once() was given a client that is not inside a transaction: BEGIN first, or pass the Pool so pg-outbox opens one',
        { cause: error },
      );
    }
    throw error;
  }
  try {
    const result = await fn();
    await exec.query('RELEASE SAVEPOINT pg_outbox');
    return result;
  } catch (error) {
    await exec.query('ROLLBACK TO SAVEPOINT pg_outbox');
    await exec.query('RELEASE SAVEPOINT pg_outbox');
    throw error;
  }
}

/**
 * Runs fn atomically. A pool (pg Pool, Kysely or Drizzle database, Knex instance, PrismaClient, TypeORM
 * DataSource, postgres.js sql) gets a transaction of its own through its library; a client or transaction is
 * already the caller's, so fn runs inside a savepoint there: a throw undoes fn's writes and leaves the caller's
 * transaction usable, and the caller's COMMIT decides.
 */
export async function withTransaction<D extends Queryable, T>(
  db: D,
  fn: (exec: Executor, tx: TransactionOf<D>) => Promise<T>,
  options: TransactionOptions = {},
): Promise<T> {
  const adapter = adapterOf(db);
  if (adapter.inTransaction(db)) {
    const exec = adapter.executor(db);
    return inSavepoint(exec, () => fn(exec, db as unknown as TransactionOf<D>));
  }
  return adapter.transaction(db, (exec, tx) => fn(exec, tx as TransactionOf<D>), options);
}
