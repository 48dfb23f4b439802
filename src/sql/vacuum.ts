import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/** The tables whose rows the outbox deletes or updates: the only ones the maintenance loop vacuums. */
export const CHURNED_TABLES = [
  'deliveries',
  'completed_deliveries',
  'dead_deliveries',
  'delivery_failures',
  'messages',
  'cancellations',
  'processed',
] as const;
export type ChurnedTable = (typeof CHURNED_TABLES)[number];

/**
 * The outbox tables whose dead rows passed autovacuum's default trigger (50 + 20% of the live rows, here at least
 * 10,000), from the statistics Postgres keeps per table (pg_stat_user_tables): no table is read.
 */
export async function selectTablesToVacuum(exec: Executor, s: SchemaName): Promise<ChurnedTable[]> {
  const rows = await exec.query<{ relname: ChurnedTable }>(
    `SELECT relname
     FROM pg_stat_user_tables
     WHERE schemaname = $1::text
       AND relname = ANY ($2::text[])
       AND n_dead_tup > 10000 + 0.2 * n_live_tup
     ORDER BY n_dead_tup DESC`,
    [s.name, [...CHURNED_TABLES]],
  );
  return rows.map((r) => r.relname);
}

/**
 * A plain VACUUM of one outbox table: it takes SHARE UPDATE EXCLUSIVE, which no claim, ack, publish or relay batch
 * conflicts with, so they go on while it runs. SKIP_LOCKED: when an autovacuum (or another VACUUM) already works on
 * the table, it returns at once instead of waiting. A role that does not own the table gets a WARNING and nothing
 * is done. `table` is one of CHURNED_TABLES, never configuration.
 */
export async function vacuumTable(exec: Executor, s: SchemaName, table: ChurnedTable): Promise<void> {
  if (!CHURNED_TABLES.includes(table)) throw new Error(`not an outbox table: ${table}`);
  await exec.query(`VACUUM (SKIP_LOCKED) ${s.quoted}.${table}`);
}

/** The server process of this connection, so that another connection can cancel its VACUUM. */
export async function selectBackendPid(exec: Executor): Promise<number> {
  const rows = await exec.query<{ pid: number }>(`SELECT pg_backend_pid() AS pid`);
  return rows[0]?.pid ?? 0;
}

/** Cancels the statement running in that server process (a VACUUM that stop() does not wait for). */
export async function cancelBackend(exec: Executor, pid: number): Promise<void> {
  await exec.query(`SELECT pg_cancel_backend($1::int)`, [pid]);
}
