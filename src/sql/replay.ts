import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/**
 * Where a replay from `since` starts and ends: the lowest id of a message published at or after `since`, found
 * through messages_created_at_idx (BRIN: it reads the block ranges from `since` on), and the highest id now. Later
 * messages are the relay's to deliver.
 */
export async function selectReplayRange(
  exec: Executor,
  s: SchemaName,
  since: Date,
): Promise<{ firstId: string | null; lastId: string | null }> {
  const rows = await exec.query<{ first_id: string | null; last_id: string | null }>(
    `SELECT (SELECT min(id) FROM ${s.quoted}.messages WHERE created_at >= $1::timestamptz)::text AS first_id,
            (SELECT max(id) FROM ${s.quoted}.messages)::text AS last_id`,
    [since],
  );
  return { firstId: rows[0]?.first_id ?? null, lastId: rows[0]?.last_id ?? null };
}

/**
 * Queues, for one subscription, a new delivery of every message among the next `limit` after `afterId` (up to
 * `untilId`, in id order through the primary key) that was published at or after `since`, matches the
 * subscription's topics, is not cancelled, and has been fanned out already: visible in the relay's done snapshot,
 * or relayed inside its open window (up to window_after_id; the window is walked in id order). A message the relay
 * has yet to fan out gets its delivery from the relay. The caller holds the delivery-ids lock exclusive (see
 * lockDeliveryIds), so no relay batch commits during this statement, its snapshot sees the relay's position as it
 * stays, and the new ids are drawn after every committed delivery id: ordered subscriptions get the replayed
 * messages after what their keys have pending, in message order among themselves.
 * A message the subscription still has pending, delayed or in flight is skipped: it is going to be delivered. A
 * dead letter of the message moves into the new delivery (its history columns are kept, attempt 0), so a message is
 * never both pending and dead for one subscription. Retention cannot remove a message while this runs: its deletes
 * hold the same lock shared.
 */
export async function replayMessages(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; since: Date; afterId: string; untilId: string; limit: number },
): Promise<{ scanned: number; lastId: string | null; replayed: number }> {
  const rows = await exec.query<{ scanned: string; last_id: string | null; replayed: string }>(
    `WITH scanned AS MATERIALIZED (
       SELECT m.id, m.tx_id, m.topic, m.key, m.created_at
       FROM ${s.quoted}.messages m
       WHERE m.id > $2::bigint
         AND m.id <= $3::bigint
       ORDER BY m.id
       LIMIT $4::int
     ),
     sub AS (
       SELECT id, topics, topic_pattern, ordered
       FROM ${s.quoted}.subscriptions
       WHERE id = $1::int
     ),
     chosen AS MATERIALIZED (
       SELECT sc.id, sc.key
       FROM scanned sc
       CROSS JOIN sub
       CROSS JOIN (SELECT * FROM ${s.quoted}.relay_state LIMIT 1) r -- one row; see audit_messages
       WHERE sc.created_at >= $5::timestamptz
         AND (sc.topic = ANY (sub.topics) OR sc.topic ~ sub.topic_pattern)
         AND (pg_visible_in_snapshot(sc.tx_id, r.done_snapshot)
              OR (r.target_snapshot IS NOT NULL
                  AND r.position_tx IS NULL
                  AND sc.id <= r.window_after_id
                  AND pg_visible_in_snapshot(sc.tx_id, r.target_snapshot)))
         AND NOT EXISTS (SELECT 1 FROM ${s.quoted}.cancellations c WHERE c.message_id = sc.id)
         AND NOT EXISTS (
           SELECT 1
           FROM ${s.quoted}.deliveries d
           WHERE d.message_id = sc.id
             AND d.subscription_id = sub.id
         )
     ),
     undead AS (
       DELETE FROM ${s.quoted}.dead_deliveries x
       WHERE x.subscription_id = $1::int
         AND x.message_id = ANY (ARRAY(SELECT id FROM chosen))
       RETURNING x.message_id, x.last_error, x.first_attempt_at, x.last_attempt_at, x.consumer_id
     ),
     queued AS (
       INSERT INTO ${s.quoted}.deliveries
         (subscription_id, message_id, key, ordered_key, available_at, last_error, first_attempt_at,
          last_attempt_at, consumer_id)
       SELECT sub.id, c.id, c.key, CASE WHEN sub.ordered THEN c.key END, now(), u.last_error,
              u.first_attempt_at, u.last_attempt_at, u.consumer_id
       FROM chosen c
       CROSS JOIN sub
       LEFT JOIN undead u ON u.message_id = c.id
       ORDER BY c.id
       ON CONFLICT (message_id, subscription_id) DO NOTHING
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM scanned)::text AS scanned,
            (SELECT max(id) FROM scanned)::text AS last_id,
            (SELECT count(*) FROM queued)::text AS replayed`,
    [p.subscriptionId, p.afterId, p.untilId, p.limit, p.since],
  );
  const row = rows[0];
  return {
    scanned: Number(row?.scanned ?? 0),
    lastId: row?.last_id ?? null,
    replayed: Number(row?.replayed ?? 0),
  };
}
