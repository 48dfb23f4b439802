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

/** Dead letters of one subscription, oldest first, read through dead_deliveries_subscription_idx. */
export async function selectDeadLetters(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; limit: number; afterId: string },
): Promise<DeadLetterRow[]> {
  return exec.query<DeadLetterRow>(
    `SELECT x.id AS delivery_id, x.message_id, m.topic, m.key, m.payload, m.headers, x.attempt, x.last_error,
            m.created_at AS published_at, x.dead_at
     FROM ${s.quoted}.dead_deliveries x
     JOIN ${s.quoted}.messages m ON m.id = x.message_id
     WHERE x.subscription_id = $1::int
       AND x.id > $3::bigint
     ORDER BY x.id
     LIMIT $2::int`,
    [p.subscriptionId, p.limit, p.afterId],
  );
}

/**
 * Moves dead letters (all of the subscription's, or the given delivery ids) back into deliveries: due at once,
 * attempt 0 (a fresh attempt budget). The previous last_error stays for the audit trail until the next attempt
 * overwrites it. Returns how many were moved.
 *
 * Which id a replayed delivery gets decides whether one-at-a-time per key survives the replay (ordered
 * subscriptions; the claim hands out a row only while no earlier delivery of its key is pending):
 * - Unordered (ordered_key NULL): nothing depends on the id; it keeps its delivery id.
 * - Ordered with block_key_on_dead: the dead letter stopped its key, so nothing after it was started. It keeps its
 *   id (OVERRIDING SYSTEM VALUE) and runs first again; the deliveries behind it wait for it as before it died.
 *   Unless a later delivery of its key has been handed out (attempt > 0: block_key_on_dead was switched on after
 *   the key had moved on): then it is treated as below.
 * - Ordered without block_key_on_dead: the key has moved past the dead letter, and later deliveries of the key
 *   may be running now. Back under its old id it would be an earlier pending row that nothing earlier blocks, so
 *   the claim would hand it out beside the running successor: two of the key at once, and the successor's own
 *   check would already have passed. So it takes a new id from the identity sequence and queues after everything
 *   of its key; the claim's rule then keeps the key one at a time, because a key's rows appear in deliveries in
 *   id order: the relay writes them in order, one batch at a time, and the new id is higher than every id
 *   committed before it (a relay batch in flight commits first: the caller holds the delivery-ids lock, see
 *   sql/locks.ts). Several replayed together keep their order among
 *   themselves: the INSERT draws the ids in old-id order.
 * Each move is a DELETE and an INSERT in one statement: every snapshot sees the delivery in exactly one of the
 * tables, so a claim never sees a key's dead letter missing from both (with block_key_on_dead, the successor
 * stays blocked throughout). Reached through dead_deliveries_subscription_idx; the DELETE's row locks make a
 * concurrent replay of the same dead letters wait and then find them gone, so each is moved once.
 */
export async function requeueDeadLetters(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; ids: string[] | null },
): Promise<number> {
  const rows = await exec.query<{ n: string }>(
    `WITH moved AS (
       DELETE FROM ${s.quoted}.dead_deliveries x
       WHERE x.subscription_id = $1::int
         AND ($2::bigint[] IS NULL OR x.id = ANY ($2::bigint[]))
       RETURNING x.id, x.subscription_id, x.message_id, x.key, x.ordered_key, x.last_error, x.created_at,
                 x.first_attempt_at, x.last_attempt_at, x.consumer_id
     ),
     sub AS (
       SELECT coalesce(bool_or(block_key_on_dead), false) AS block_key_on_dead
       FROM ${s.quoted}.subscriptions
       WHERE id = $1::int
     ),
     -- Whether each keeps its id (see above and keepsDeliveryId).
     decided AS MATERIALIZED (
       SELECT m.*, ${keepsDeliveryId(s, 'm', 'sub.block_key_on_dead')} AS keep
       FROM moved m, sub
     ),
     kept AS (
       INSERT INTO ${s.quoted}.deliveries
         (id, subscription_id, message_id, key, ordered_key, attempt, available_at, last_error, created_at,
          first_attempt_at, last_attempt_at, consumer_id)
       OVERRIDING SYSTEM VALUE
       SELECT m.id, m.subscription_id, m.message_id, m.key, m.ordered_key, 0, now(), m.last_error, m.created_at,
              m.first_attempt_at, m.last_attempt_at, m.consumer_id
       FROM decided m
       WHERE m.keep
       RETURNING id
     ),
     renumbered AS (
       INSERT INTO ${s.quoted}.deliveries
         (subscription_id, message_id, key, ordered_key, attempt, available_at, last_error, created_at,
          first_attempt_at, last_attempt_at, consumer_id)
       SELECT m.subscription_id, m.message_id, m.key, m.ordered_key, 0, now(), m.last_error, m.created_at,
              m.first_attempt_at, m.last_attempt_at, m.consumer_id
       FROM decided m
       WHERE NOT m.keep
       ORDER BY m.id
       RETURNING id
     )
     SELECT ((SELECT count(*) FROM kept) + (SELECT count(*) FROM renumbered))::text AS n`,
    [p.subscriptionId, p.ids],
  );
  return Number(rows[0]?.n ?? 0);
}

/**
 * The rule of requeueDeadLetters (which id a replayed dead letter gets) as an SQL expression: whether the dead letter
 * `dead` (a row with id, subscription_id and ordered_key) keeps its delivery id when it is queued again,
 * `blockKeyOnDead` being its subscription's setting. Shared with replay from a point in time (sql/replay.ts). The
 * probe of later started deliveries of its key goes through deliveries_ordered_key_idx, once per ordered dead letter
 * of a subscription with block_key_on_dead.
 */
export function keepsDeliveryId(s: SchemaName, dead: string, blockKeyOnDead: string): string {
  return `(${dead}.ordered_key IS NULL
           OR (${blockKeyOnDead} AND NOT EXISTS (
                 SELECT 1
                 FROM ${s.quoted}.deliveries d
                 WHERE d.subscription_id = ${dead}.subscription_id
                   AND d.ordered_key = ${dead}.ordered_key
                   AND d.id > ${dead}.id
                   AND d.attempt > 0
               )))`;
}

/** Wakes the subscription's consumers after a replay (delivered at commit). */
export async function notifySubscription(
  exec: Executor,
  s: SchemaName,
  subscriptionId: number,
): Promise<void> {
  await exec.query(`SELECT pg_notify($1::text, $2::text)`, [s.channel, String(subscriptionId)]);
}
