import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/**
 * Deletes up to `limit` dead letters that died more than `retentionMs` ago, oldest first, through
 * dead_deliveries_dead_at_idx. SKIP LOCKED passes over a dead letter that replay() is moving back right now, so
 * the cleanup never waits for a replay and cannot deadlock with one; a replay that reaches a row the cleanup holds
 * waits for this statement and then finds the row gone (it had expired). The rows go by ctid, as in deleteExpiredProcessedKeys: locked by the subquery, they cannot move
 * before this statement deletes them. Returns how many were deleted; the caller repeats while a full batch came back.
 */
export async function deleteExpiredDeadDeliveries(
  exec: Executor,
  s: SchemaName,
  p: { retentionMs: number; limit: number },
): Promise<number> {
  const rows = await exec.query<{ n: string }>(
    `WITH deleted AS (
       DELETE FROM ${s.quoted}.dead_deliveries
       WHERE ctid = ANY (ARRAY(
         SELECT ctid
         FROM ${s.quoted}.dead_deliveries
         WHERE dead_at < now() - $1::bigint * interval '1 millisecond'
         ORDER BY dead_at
         LIMIT $2::int
         FOR UPDATE SKIP LOCKED
       ))
       RETURNING 1
     )
     SELECT count(*)::text AS n FROM deleted`,
    [p.retentionMs, p.limit],
  );
  return Number(rows[0]?.n ?? 0);
}

/**
 * Gives up on dead letters for good (the admin page's Discard): each moves into completed_deliveries as
 * 'cancelled', history columns kept, so the audit trail shows it finished and retention removes it with its
 * message; an ordered subscription's key that it blocked is free again. `ids` null: every dead letter of the
 * subscription. Lock: the DELETE row-locks each dead letter; a concurrent replay of the same one waits and then
 * finds it gone (or the reverse), so each is moved once.
 */
export async function discardDeadDeliveries(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; ids: string[] | null },
): Promise<number> {
  const rows = await exec.query<{ n: string }>(
    `WITH moved AS (
       DELETE FROM ${s.quoted}.dead_deliveries x
       WHERE x.subscription_id = $1::int
         AND ($2::bigint[] IS NULL OR x.id = ANY ($2::bigint[]))
       RETURNING x.id, x.subscription_id, x.message_id, x.key, x.attempt, x.last_error, x.created_at,
                 x.first_attempt_at, x.last_attempt_at, x.consumer_id
     ),
     finished AS (
       INSERT INTO ${s.quoted}.completed_deliveries
         (id, subscription_id, message_id, key, attempt, last_error, created_at, outcome,
          first_attempt_at, last_attempt_at, consumer_id)
       SELECT id, subscription_id, message_id, key, attempt, last_error, created_at, 'cancelled',
              first_attempt_at, last_attempt_at, consumer_id
       FROM moved
       RETURNING 1
     )
     SELECT count(*)::text AS n FROM finished`,
    [p.subscriptionId, p.ids],
  );
  return Number(rows[0]?.n ?? 0);
}
