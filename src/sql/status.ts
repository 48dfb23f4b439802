import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

export interface SubscriptionStatusRow {
  subscription: string;
  topics: string[];
  ordered: boolean;
  block_key_on_dead: boolean;
  rate_limit: number | null;
  rate_burst: number | null;
  key_concurrency: number | null;
  pending: string;
  delayed: string;
  in_flight: string;
  dead: string;
  done_last_hour: string;
  failed_last_hour: string;
  oldest_pending_ms: string;
}

/**
 * Per-subscription figures, read from the audit_subscriptions view (the documented SQL contract), so status() and
 * SQL users see the same numbers. Its costs: see the view in migrations/1766000000000_audit.sql.
 */
export async function selectSubscriptionStatus(
  exec: Executor,
  s: SchemaName,
): Promise<SubscriptionStatusRow[]> {
  return exec.query<SubscriptionStatusRow>(
    `SELECT a.subscription, a.topics, a.ordered, a.block_key_on_dead,
            sub.rate_limit, sub.rate_burst, sub.key_concurrency,
            a.pending::text, a.delayed::text, a.in_flight::text, a.dead::text,
            a.done_last_hour::text, a.failed_last_hour::text,
            (EXTRACT(EPOCH FROM a.oldest_pending_age) * 1000)::bigint::text AS oldest_pending_ms
     FROM ${s.quoted}.audit_subscriptions a
     -- The flow-control settings are not in the view (its contract, version 1, predates them).
     JOIN ${s.quoted}.subscriptions sub ON sub.name = a.subscription
     ORDER BY a.subscription`,
  );
}

/**
 * Committed messages not fanned out yet, and the age of the oldest: the relay's backlog and lag, from the audit_relay
 * view. It reads only what the relay has still to read (above done_max_id through the primary key, and the rows of
 * transactions that were running at done), so its cost is the backlog's, not the history's.
 */
export async function selectRelayBacklog(
  exec: Executor,
  s: SchemaName,
): Promise<{ backlog: number; lagMs: number }> {
  const rows = await exec.query<{ backlog: string; lag_ms: string }>(
    `SELECT backlog::text, (EXTRACT(EPOCH FROM lag) * 1000)::bigint::text AS lag_ms
     FROM ${s.quoted}.audit_relay`,
  );
  return { backlog: Number(rows[0]?.backlog ?? 0), lagMs: Math.max(0, Number(rows[0]?.lag_ms ?? 0)) };
}
