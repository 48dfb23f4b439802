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
