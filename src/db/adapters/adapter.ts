import { OutboxError } from '../../errors.js';
import type { Executor } from '../executor.js';

/** Options for a transaction an adapter opens. */
export interface TransactionOptions {
  /** Libraries that end a transaction after a timeout of their own (Prisma: 5 s) get at least this much. */
  timeoutMs?: number;
}

/**
 * How pg-outbox talks through one data-access library. Adapters recognise the library's objects by their shape
 * and never import it at load time: none of these libraries is a dependency of pg-outbox.
 */
export interface DbAdapter<D = never> {
  /** Named in error messages. */
  readonly library: string;
  matches(db: object): boolean;
  /** Runs statements inline on what the caller handed over: its connection, its transaction, or its pool. */
  executor(db: D): Executor;
  /** True when db is a transaction already (once() then runs in a savepoint of it), false when it is a pool. */
  inTransaction(db: D): boolean;
  /** Opens a transaction of the library's own and hands fn the library's transaction object. */
  transaction<T>(
    db: D,
    fn: (exec: Executor, tx: unknown) => Promise<T>,
    options: TransactionOptions,
  ): Promise<T>;
}

/** A row value some libraries return where pg returns text: bigint columns as BigInt. */
export function normalizeRow<R>(row: Record<string, unknown>): R {
  for (const [column, value] of Object.entries(row)) {
    if (typeof value === 'bigint') row[column] = value.toString();
  }
  return row as R;
}

/** Rows from what a query function returned: an array of rows, or a result object with `rows`. */
export function rowsOf<R>(result: unknown, library: string): R[] {
  if (Array.isArray(result)) return result as R[];
  if (typeof result === 'object' && result !== null && 'rows' in result && Array.isArray(result.rows)) {
    return result.rows as R[];
  }
  throw new OutboxError(
    'OUTBOX_INVALID_EXECUTOR',
    `${library}: query() returned neither an array of rows nor an object with rows: pass a supported client`,
    { value: typeof result },
  );
}

/** A method of an unknown object, or undefined. */
export function method(db: object, name: string): ((...args: unknown[]) => unknown) | undefined {
  const value = (db as Record<string, unknown>)[name];
  return typeof value === 'function' ? (value as (...args: unknown[]) => unknown) : undefined;
}
