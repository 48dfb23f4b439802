import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

export interface DeadLetterRow {
  delivery_id: string;
  message_id: string;
  topic: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  attempt: number;
  last_error: string | null;
  published_at: Date;
  dead_at: Date | null;
}

/** Dead letters of one subscription, oldest first, read through deliveries_dead_idx. */
export async function selectDeadLetters(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; limit: number; afterId: string },
): Promise<DeadLetterRow[]> {
  return exec.query<DeadLetterRow>(
    `SELECT d.id AS delivery_id, d.message_id, m.topic, m.key, m.payload, m.headers, d.attempt, d.last_error,
            m.created_at AS published_at, d.completed_at AS dead_at
     FROM ${s.quoted}.deliveries d
     JOIN ${s.quoted}.messages m ON m.id = d.message_id
     WHERE d.subscription_id = $1::int
       AND d.state = 'dead'
       AND d.id > $3::bigint
     ORDER BY d.id
     LIMIT $2::int`,
    [p.subscriptionId, p.limit, p.afterId],
  );
}

/**
 * Re-queues dead letters (all of the subscription's, or the given delivery ids): due at once with a fresh attempt
 * budget. The previous last_error stays for the audit trail until the next attempt overwrites it.
 */
export async function requeueDeadLetters(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; ids: string[] | null },
): Promise<number> {
  const rows = await exec.query<{ id: string }>(
    `UPDATE ${s.quoted}.deliveries
     SET state = 'pending',
         attempt = 0,
         available_at = now(),
         leased_until = NULL,
         completed_at = NULL
     WHERE subscription_id = $1::int
       AND state = 'dead'
       AND ($2::bigint[] IS NULL OR id = ANY ($2::bigint[]))
     RETURNING id`,
    [p.subscriptionId, p.ids],
  );
  return rows.length;
}

/** Wakes the subscription's consumers after a replay (delivered at commit). */
export async function notifySubscription(
  exec: Executor,
  s: SchemaName,
  subscriptionId: number,
): Promise<void> {
  await exec.query(`SELECT pg_notify($1::text, $2::text)`, [s.channel, String(subscriptionId)]);
}
