import type pg from 'pg';
import { CompiledQuery, type Kysely, type Transaction } from 'kysely';
import { OutboxError } from '../errors.js';
import { inPoolTransaction } from './checkout.js';
import { isNoActiveTransaction } from './pg-errors.js';

// Kysely's database type is the caller's; we only run raw SQL through it.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyKysely = Kysely<any>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyTransaction = Transaction<any>;

/** What callers may pass as `db`: a pg Pool, PoolClient or Client, or a Kysely instance or Transaction. */
export type Queryable = pg.Pool | pg.PoolClient | pg.Client | AnyKysely | AnyTransaction;

/** One way to run a statement, whatever the caller handed us. */
export interface Executor {
  query<R>(text: string, params?: readonly unknown[]): Promise<R[]>;
}

/** The transaction handed to `once()` callbacks: a pg client, or a Kysely Transaction when given Kysely. */
export type TransactionOf<D extends Queryable> = D extends AnyKysely
  ? AnyTransaction
  : D extends pg.Pool
    ? pg.PoolClient
    : D;

function isKysely(db: object): db is AnyKysely {
  return typeof (db as Partial<AnyKysely>).executeQuery === 'function' && 'isTransaction' in db;
}

function isPool(db: object): db is pg.Pool {
  return 'totalCount' in db && typeof (db as Partial<pg.Pool>).connect === 'function';
}

function isClient(db: object): db is pg.ClientBase {
  return typeof (db as Partial<pg.ClientBase>).query === 'function';
}

function invalid(db: unknown): OutboxError {
  return new OutboxError(
    'OUTBOX_INVALID_EXECUTOR',
    'Expected a pg Pool, PoolClient or Client, or a Kysely instance or Transaction as the first argument',
    { value: typeof db },
  );
}

export function pgExecutor(client: pg.Pool | pg.ClientBase): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const result = await client.query(text, params as unknown[]);
      return result.rows as R[];
    },
  };
}

function kyselyExecutor(db: AnyKysely): Executor {
  // Result plugins (CamelCasePlugin, ...) would rename our columns; our statements read raw rows.
  const raw = db.withoutPlugins();
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const result = await raw.executeQuery<R>(CompiledQuery.raw(text, [...params]));
      return [...result.rows];
    },
  };
}

/** Wraps the caller's connection. Statements run inline: never BEGIN/COMMIT on a lent connection. */
export function toExecutor(db: Queryable): Executor {
  if (typeof db !== 'object' || db === null) throw invalid(db);
  if (isKysely(db)) return kyselyExecutor(db);
  if (isPool(db) || isClient(db)) return pgExecutor(db);
  throw invalid(db);
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
 * Runs fn atomically. A Pool or Kysely instance gets a transaction of its own; a client or Kysely Transaction is
 * already the caller's transaction, so fn runs inside a savepoint there: a throw undoes fn's writes and leaves the
 * caller's transaction usable, and the caller's COMMIT decides.
 */
export async function withTransaction<D extends Queryable, T>(
  db: D,
  fn: (exec: Executor, tx: TransactionOf<D>) => Promise<T>,
): Promise<T> {
  if (typeof db !== 'object' || db === null) throw invalid(db);
  if (isKysely(db)) {
    if (db.isTransaction) {
      const exec = kyselyExecutor(db);
      return inSavepoint(exec, () => fn(exec, db as TransactionOf<D>));
    }
    return db.transaction().execute((trx) => fn(kyselyExecutor(trx), trx as TransactionOf<D>));
  }
  if (isPool(db)) {
    return inPoolTransaction(db, (client) => fn(pgExecutor(client), client as TransactionOf<D>));
  }
  if (isClient(db)) {
    const exec = pgExecutor(db);
    return inSavepoint(exec, () => fn(exec, db as TransactionOf<D>));
  }
  throw invalid(db);
}
