import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/**
 * Records an idempotency key in the caller's transaction; true when the key is new.
 * A concurrent transaction inserting the same key makes this one wait on the primary key until it ends: if it
 * commits, ON CONFLICT DO NOTHING returns no row (a duplicate); if it rolls back, this insert goes through.
 * One row per call, so two keys cannot deadlock each other through this statement.
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
