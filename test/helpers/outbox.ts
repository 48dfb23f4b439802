import pg from 'pg';
import { pino } from 'pino';
import { inject } from 'vitest';
import { createOutbox, type Outbox, type OutboxOptions } from '../../src/index.js';
import { createTestDatabase, type TestDatabase } from './postgres.js';

export interface OutboxTestContext {
  db: TestDatabase;
  pool: pg.Pool;
  /** A new Outbox on the file's database; stopped by close(). */
  outbox(options?: Partial<OutboxOptions>): Outbox;
  close(): Promise<void>;
}

export const testLogger = pino({ level: process.env.OUTBOX_TEST_LOG ?? 'silent' });

/** A database of the test file's own, migrated, with a pool and an Outbox factory. */
export async function setupOutboxTest(options: { poolMax?: number } = {}): Promise<OutboxTestContext> {
  const db = await createTestDatabase(inject('databaseUrl'));
  const pool = new pg.Pool({ connectionString: db.url, max: options.poolMax ?? 20 });
  const outboxes: Outbox[] = [];
  const outbox = (overrides: Partial<OutboxOptions> = {}) => {
    const o = createOutbox({ pool, logger: testLogger, shutdownTimeoutMs: 2_000, ...overrides });
    outboxes.push(o);
    return o;
  };
  await outbox().migrate();
  return {
    db,
    pool,
    outbox,
    async close() {
      await Promise.all(outboxes.map((o) => o.stop()));
      await pool.end();
      await db.drop();
    },
  };
}

/**
 * Waits for a condition, polling every `intervalMs`, until a deadline; throws with the label when it never holds.
 * A check that costs a query on a large table deserves a longer interval than the default.
 */
export async function waitFor<T>(
  label: string,
  check: () => Promise<T | false | null | undefined> | T | false | null | undefined,
  timeoutMs = 20_000,
  intervalMs = 10,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== false && value !== null && value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${label}`, { cause: last });
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Deliveries of a subscription the audit view shows done (each ack is written by then). */
export function doneCount(pool: pg.Pool, subscription: string, schema = 'outbox'): Promise<number> {
  return count(
    pool,
    `SELECT count(*) AS n FROM ${schema}.audit_deliveries WHERE subscription = $1 AND status = 'done'`,
    [subscription],
  );
}

export async function count(pool: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(sql, params);
  return Number(rows[0]?.n ?? 0);
}
