import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

export interface SubscriptionStatusRow {
  name: string;
  topics: string[];
  pending: string;
  delayed: string;
  in_flight: string;
  dead: string;
  oldest_pending_ms: string | null;
}

/**
 * Per-subscription counts. Pending, delayed and in-flight rows are read from deliveries_due_idx (pending rows
 * only) and dead rows from dead_deliveries_subscription_idx, so done history does not make this slower.
 */
export async function selectSubscriptionStatus(
  exec: Executor,
  s: SchemaName,
): Promise<SubscriptionStatusRow[]> {
  return exec.query<SubscriptionStatusRow>(
    `SELECT sub.name,
            sub.topics,
            coalesce(p.pending, 0)::text AS pending,
            coalesce(p.delayed, 0)::text AS delayed,
            coalesce(p.in_flight, 0)::text AS in_flight,
            (SELECT count(*) FROM ${s.quoted}.dead_deliveries x
              WHERE x.subscription_id = sub.id)::text AS dead,
            (EXTRACT(EPOCH FROM now() - p.oldest_due) * 1000)::bigint::text AS oldest_pending_ms
     FROM ${s.quoted}.subscriptions sub
     LEFT JOIN LATERAL (
       SELECT count(*) FILTER (WHERE d.available_at <= now()) AS pending,
              count(*) FILTER (WHERE d.available_at > now() AND d.leased_until IS NULL) AS delayed,
              count(*) FILTER (WHERE d.leased_until > now()) AS in_flight,
              min(d.available_at) FILTER (WHERE d.available_at <= now()) AS oldest_due
       FROM ${s.quoted}.deliveries d
       WHERE d.subscription_id = sub.id
         AND d.state = 'pending'
     ) p ON true
     ORDER BY sub.name`,
  );
}

/**
 * Committed messages not fanned out yet, and the age of the oldest: the relay's backlog and lag. Reads only what the
 * relay has still to read (above done_max_id through the primary key, and the rows of transactions that were running
 * at done), so its cost is the backlog's, not the history's.
 */
export async function selectRelayBacklog(
  exec: Executor,
  s: SchemaName,
): Promise<{ backlog: number; lagMs: number }> {
  const rows = await exec.query<{ backlog: string; lag_ms: string | null }>(
    `SELECT count(*)::text AS backlog,
            (EXTRACT(EPOCH FROM now() - min(w.created_at)) * 1000)::bigint::text AS lag_ms
     FROM ${s.quoted}.relay_state r
     CROSS JOIN LATERAL (
       SELECT m.created_at
       FROM ${s.quoted}.messages m
       WHERE m.id > r.done_max_id
         AND NOT pg_visible_in_snapshot(m.tx_id, r.done_snapshot)
       UNION ALL
       SELECT m.created_at
       FROM ${s.quoted}.messages m
       WHERE m.tx_id = ANY (ARRAY(SELECT pg_snapshot_xip(r.done_snapshot)))
         AND m.id <= r.done_max_id
       UNION ALL
       SELECT m.created_at
       FROM ${s.quoted}.messages m
       WHERE m.tx_id >= pg_snapshot_xmax(r.done_snapshot)
         AND m.tx_id < coalesce(
               CASE WHEN r.done_xid_bound_xmax = pg_snapshot_xmax(r.done_snapshot) THEN r.done_xid_bound END,
               pg_snapshot_xmax(pg_current_snapshot()))
         AND m.id <= r.done_max_id
     ) w`,
  );
  return { backlog: Number(rows[0]?.backlog ?? 0), lagMs: Math.max(0, Number(rows[0]?.lag_ms ?? 0)) };
}
