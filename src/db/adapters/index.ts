import type { DbAdapter } from './adapter.js';
import { drizzleAdapter } from './drizzle.js';
import { knexAdapter } from './knex.js';
import { kyselyAdapter } from './kysely.js';
import { poolAdapter, queryClientAdapter } from './node-postgres.js';
import { postgresJsAdapter } from './postgres-js.js';
import { prismaAdapter } from './prisma.js';
import { typeOrmAdapter } from './typeorm.js';

/**
 * In the order they are tried: the libraries' own shapes first, and last any object with pg's query(text, values)
 * (TypeORM's objects have one too, and a pg Pool is told from a client by its counters).
 */
const ADAPTERS = [
  kyselyAdapter,
  knexAdapter,
  postgresJsAdapter,
  drizzleAdapter,
  prismaAdapter,
  typeOrmAdapter,
  poolAdapter,
  queryClientAdapter,
] as DbAdapter<unknown>[];

/** The adapter for what a caller handed over, or undefined when nothing recognises it. */
export function adapterFor(db: unknown): DbAdapter<unknown> | undefined {
  if ((typeof db !== 'object' && typeof db !== 'function') || db === null) return undefined;
  return ADAPTERS.find((adapter) => adapter.matches(db));
}
