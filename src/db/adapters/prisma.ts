import type { Executor } from '../executor.js';
import { normalizeRow, type DbAdapter } from './adapter.js';

/** The part of a PrismaClient (or an interactive transaction's client) that pg-outbox uses. */
export interface PrismaLike {
  $queryRawUnsafe(query: string, ...values: unknown[]): PromiseLike<unknown>;
}

interface PrismaClientLike extends PrismaLike {
  $transaction(fn: (tx: PrismaLike) => Promise<unknown>, options?: { timeout?: number }): Promise<unknown>;
}

function executor(db: PrismaLike): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      // Prisma returns bigint columns as BigInt where pg returns text; our statements read ids as text.
      const rows = (await db.$queryRawUnsafe(text, ...params)) as Record<string, unknown>[];
      return rows.map((row) => normalizeRow<R>(row));
    },
  };
}

/**
 * A PrismaClient with a Postgres driver adapter (Prisma 7: @prisma/adapter-pg), or the client an interactive
 * $transaction hands its callback. The transaction client lacks $disconnect (Prisma's ITXClientDenyList).
 */
export const prismaAdapter: DbAdapter<PrismaLike> = {
  library: 'Prisma',
  matches: (db) => typeof (db as Partial<PrismaLike>).$queryRawUnsafe === 'function',
  executor,
  inTransaction: (db) => typeof (db as { $disconnect?: unknown }).$disconnect !== 'function',
  async transaction<T>(
    db: PrismaLike,
    fn: (exec: Executor, tx: unknown) => Promise<T>,
    options: { timeoutMs?: number },
  ) {
    const client = db as PrismaClientLike;
    // Prisma ends an interactive transaction after `timeout` (5 s by default) and rolls it back.
    const timeout = Math.max(5_000, options.timeoutMs ?? 0);
    return (await client.$transaction((tx) => fn(executor(tx), tx), { timeout })) as T;
  },
};
