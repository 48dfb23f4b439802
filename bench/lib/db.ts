import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import type { SqlClient } from './system.js';

/**
 * A pool with an 'error' listener: pg-pool emits an idle client's connection error on the pool, and without a
 * listener that would end the benchmark with an unhandled 'error' event.
 */
export function createPool(url: string, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max });
  pool.on('error', (error) => console.warn(`[bench] idle connection lost: ${error.message}`));
  return pool;
}

/** Milliseconds since the epoch with sub-millisecond resolution, from the monotonic clock of this process. */
export function preciseNow(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Polls a condition until it holds or the deadline passes. Every wait in the suite goes through here: a wait is
 * for a state of the database or of the handlers, never a fixed sleep.
 */
export async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  { timeoutMs = 120_000, intervalMs = 5 } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(intervalMs);
  }
}

/**
 * A client that takes overlapping queries and runs each after the previous one has settled, in call order:
 * pg-boss's publish() sends to every subscribed queue at once, and pg 8 deprecates concurrent queries on a client.
 */
export function inCallOrder(client: SqlClient): SqlClient {
  if (client.pipelines === true) return client;
  let last: Promise<unknown> = Promise.resolve();
  return {
    pipelines: true,
    query: (text, values) => {
      const next = last.then(() => client.query(text, values));
      last = next.catch(() => undefined);
      return next;
    },
  };
}

export async function dropSchemas(pool: pg.Pool, ...schemas: string[]): Promise<void> {
  for (const schema of schemas) await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
}

/** Runs fn between BEGIN and COMMIT on one client of the pool: the caller's transaction of the scenarios. */
export async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

export async function count(pool: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(sql, params);
  return Number(rows[0]?.n ?? 0);
}
