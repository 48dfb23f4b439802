import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/**
 * Records an idempotency key in the caller's transaction; true when the key is new.
 * A concurrent transaction inserting the same key makes this one wait on the primary key until it ends: if it
 * commits, ON CONFLICT DO NOTHING returns no row (a duplicate); if it rolls back, this insert goes through.
 * Two transactions that each record several keys in opposite order can deadlock; Postgres cancels one of them
 * and the transactional lane runs its deliveries again one per transaction (see transactional-lane.ts).
 */
export async function insertProcessedKey(
  exec: Executor,
  s: SchemaName,
  scope: string,
  key: string,
): Promise<boolean> {
  const rows = await exec.query<{ inserted: boolean }>(
    `INSERT INTO ${s.quoted}.processed (scope, key)
     VALUES ($1::text, $2::text)
     ON CONFLICT (scope, key) DO NOTHING
     RETURNING true AS inserted`,
    [scope, key],
  );
  return rows.length === 1;
}

/**
 * Deletes up to `limit` idempotency keys recorded more than `retentionMs` ago, oldest first, through
 * processed_recorded_at_idx. SKIP LOCKED leaves keys that a running transaction holds alone (they go in a later
 * batch), so the cleanup never waits on a row lock and cannot deadlock with a once(). The rows are deleted by
 * ctid (a Tid Scan): the subquery has locked them, so no other transaction can move or delete them before this
 * statement does, and a batch costs O(limit). Joining back on (scope, key) instead made the planner hash the whole
 * table for every batch. Returns how many were deleted; the caller repeats while a full batch came back.
 */
export async function deleteExpiredProcessedKeys(
  exec: Executor,
  s: SchemaName,
  p: { retentionMs: number; limit: number },
): Promise<number> {
  const rows = await exec.query<{ n: string }>(
    `WITH deleted AS (
       DELETE FROM ${s.quoted}.processed
       WHERE ctid = ANY (ARRAY(
         SELECT ctid
         FROM ${s.quoted}.processed
         WHERE recorded_at < now() - $1::bigint * interval '1 millisecond'
         ORDER BY recorded_at
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
