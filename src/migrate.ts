import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { runner } from 'node-pg-migrate';
import type pg from 'pg';
import type { Logger } from 'pino';
import { checkoutClient } from './db/checkout.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';

/** migrations/ ships beside dist/ and src/ in the package. */
const MIGRATIONS_DIR = fileURLToPath(new URL('../migrations', import.meta.url));
export const MIGRATIONS_TABLE = 'pg_outbox_migrations';

/** A per-schema lock id for node-pg-migrate's advisory lock: 48 bits of a hash, a safe integer. */
function lockValue(schema: SchemaName): number {
  const digest = createHash('sha256').update(`pg-outbox:migrate:${schema.name}`).digest();
  return digest.readUIntBE(0, 6);
}

/**
 * Runs pending migrations into the schema, creating it if needed. Safe from many processes at once: each waits
 * for the schema's advisory lock, then finds nothing left to run. Idempotent.
 */
export async function migrate(pool: pg.Pool, schema: SchemaName, logger: Logger): Promise<string[]> {
  const log = logger.child({ component: 'migrate', schema: schema.name });
  const onError = (error: Error) => {
    log.warn({ err: error }, 'migration connection error');
  };
  const client = await checkoutClient(pool, onError);
  try {
    const ran = await runner({
      dbClient: client,
      dir: MIGRATIONS_DIR,
      direction: 'up',
      schema: schema.name,
      createSchema: true,
      migrationsSchema: schema.name,
      migrationsTable: MIGRATIONS_TABLE,
      lockValue: lockValue(schema),
      advisoryLockMode: 'wait',
      singleTransaction: true,
      checkOrder: true,
      log: (message: string) => log.debug({ message }, 'node-pg-migrate'),
    });
    for (const m of ran) log.info({ migration: m.name }, 'migration applied');
    return ran.map((m) => m.name);
  } catch (error) {
    throw new OutboxError(
      'OUTBOX_MIGRATION_FAILED',
      `Migrating schema "${schema.name}" failed: ${(error as Error).message}`,
      { cause: error, value: schema.name },
    );
  } finally {
    client.off('error', onError);
    // node-pg-migrate changed this session's search_path; do not hand that connection back to the pool.
    client.release(true);
  }
}
