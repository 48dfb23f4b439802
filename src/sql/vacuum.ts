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

/** What Postgres's statistics (pg_stat_user_tables) say about one outbox table. */
export interface TableStats {
  table: ChurnedTable;
  dead: number;
  live: number;
  /** Autovacuum's default trigger for this table: 50 + 20% of the live rows, here at least 10,000. */
  trigger: number;
  /** VACUUMs counted so far (ours and autovacuum's): tells whether the figures include the last one. */
  vacuums: number;
}

interface StatsRow {
  relname: ChurnedTable;
  dead: string;
  live: string;
  trigger: string;
  vacuums: string;
}

const STATS = `
  SELECT relname,
         n_dead_tup::text AS dead,
         n_live_tup::text AS live,
         (10000 + 0.2 * n_live_tup)::bigint::text AS trigger,
         (vacuum_count + autovacuum_count)::text AS vacuums
  FROM pg_stat_user_tables
  WHERE schemaname = $1::text
    AND relname = ANY ($2::text[])`;

const toStats = (r: StatsRow): TableStats => ({
  table: r.relname,
  dead: Number(r.dead),
  live: Number(r.live),
  trigger: Number(r.trigger),
  vacuums: Number(r.vacuums),
});

/**
 * The outbox tables whose dead rows passed the trigger, most dead rows first, from the statistics Postgres keeps
 * per table: no table is read.
 */
export async function selectTablesToVacuum(exec: Executor, s: SchemaName): Promise<TableStats[]> {
  const rows = await exec.query<StatsRow>(
    `${STATS}
       AND n_dead_tup > 10000 + 0.2 * n_live_tup
     ORDER BY n_dead_tup DESC`,
    [s.name, [...CHURNED_TABLES]],
  );
  return rows.map(toStats);
}

/**
 * One table's statistics. Read right after a VACUUM, they show what it left: from PostgreSQL 15 on, a VACUUM writes
 * its counts into the shared statistics as it ends (13 and 14 send them to the statistics collector, which shows them
 * later: `vacuums` has not moved yet then). Each statement outside a transaction reads them afresh.
 */
export async function selectTableStats(
  exec: Executor,
  s: SchemaName,
  table: ChurnedTable,
): Promise<TableStats | null> {
  const rows = await exec.query<StatsRow>(STATS, [s.name, [table]]);
  return rows[0] === undefined ? null : toStats(rows[0]);
}

/** What holds back the xmin horizon, below which VACUUM may not remove dead rows. */
export interface XminHolder {
  kind: 'backend' | 'replication slot' | 'prepared transaction';
  /** The xid (as text) it holds the horizon at: its snapshot's xmin or its own transaction id. */
  xmin: string;
  /** For a backend: its process, state and transaction start; for the others, their name. */
  pid: number | null;
  state: string | null;
  xactStart: Date | null;
  name: string | null;
}

/*
 * HOLDERS: whatever keeps the horizon of this database's tables back: backends of this database (and walsenders,
 * which carry a standby's feedback) by their snapshot or their transaction id, replication slots, and prepared
 * transactions of this database. Without pg_read_all_stats, backends of other roles show no xmin here.
 */
const HOLDERS = `
  holders AS (
    SELECT 'backend' AS kind, x.xmin, a.pid, a.state, coalesce(a.xact_start, a.backend_start) AS since,
           a.application_name AS name
    FROM pg_stat_activity a
    CROSS JOIN LATERAL (VALUES (a.backend_xmin), (a.backend_xid)) x(xmin)
    WHERE x.xmin IS NOT NULL
      AND a.pid <> pg_backend_pid()
      AND (a.datname = current_database() OR a.backend_type = 'walsender')
    UNION ALL
    SELECT 'replication slot', s.xmin, NULL, NULL, NULL, s.slot_name::text
    FROM pg_replication_slots s
    WHERE s.xmin IS NOT NULL
    UNION ALL
    SELECT 'prepared transaction', p.transaction, NULL, NULL, p.prepared, p.gid
    FROM pg_prepared_xacts p
    WHERE p.database = current_database()
  )`;

/**
 * The oldest xmin holder that may explain a VACUUM that could not remove dead rows: a backend only if its
 * transaction began at least `heldForMs` ago (it was there when that VACUUM began), any slot or prepared
 * transaction. Null: none found (or hidden for want of privileges).
 */
export async function selectXminHolder(exec: Executor, heldForMs: number): Promise<XminHolder | null> {
  const rows = await exec.query<XminHolder>(
    `WITH ${HOLDERS}
     SELECT kind, xmin::text AS xmin, pid, state, since AS "xactStart", name
     FROM holders
     WHERE kind <> 'backend' OR since <= now() - $1::bigint * interval '1 millisecond'
     ORDER BY age(xmin) DESC
     LIMIT 1`,
    [heldForMs],
  );
  return rows[0] ?? null;
}

/** Of the given xmins, those that something still holds the horizon at (or before): see HOLDERS. */
export async function selectXminsStillHeld(exec: Executor, xmins: string[]): Promise<string[]> {
  const rows = await exec.query<{ xmin: string }>(
    `WITH ${HOLDERS}
     SELECT x::text AS xmin
     FROM unnest($1::xid[]) x
     WHERE EXISTS (SELECT 1 FROM holders h WHERE age(h.xmin) >= age(x))`,
    [xmins],
  );
  return rows.map((r) => r.xmin);
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
