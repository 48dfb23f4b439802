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
