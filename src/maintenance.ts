import type { Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { deleteExpiredDeadDeliveries } from './sql/dead-deliveries.js';
import { deleteExpiredProcessedKeys } from './sql/processed.js';

/**
 * Rows per DELETE. Each statement stays in the low milliseconds and holds at most this many row locks. On a shared
 * 2-core machine, 5,000 deleted 250,000 to 400,000 expired keys/s (1,000 about half that, 10,000 no more), and
 * still 70,000 or more with a load average above 10: above the ~55,000 msg/s the consumers drain, so a pass keeps up
 * with any rate of once() they reach.
 */
export const CLEANUP_BATCH = 5_000;

export interface CleanupResult {
  /** Idempotency keys deleted because they were older than processedRetentionMs. */
  processedKeysDeleted: number;
  /** Dead letters deleted because they died longer ago than deadLetterRetentionMs. */
  deadLettersDeleted: number;
}

/** How long each kind of row is kept; 0 keeps it forever. */
export interface Retention {
  processedRetentionMs: number;
  deadLetterRetentionMs: number;
}

export interface CleanupBounds {
  /** Most statements per table in one pass. */
  maxBatches: number;
  /** Checked before every statement: true ends the pass (the loop stops, or its relay lost the lead). */
  stop: () => boolean;
}

export interface CleanupPass extends CleanupResult {
  /** The pass ended on a bound, not on a short batch: more rows may be due already. */
  more: boolean;
}

type DeleteExpired = (
  exec: Executor,
  s: SchemaName,
  p: { retentionMs: number; limit: number },
) => Promise<number>;

async function deleteInBatches(
  exec: Executor,
  s: SchemaName,
  deleteExpired: DeleteExpired,
  retentionMs: number,
  bounds: CleanupBounds,
): Promise<{ deleted: number; more: boolean }> {
  let deleted = 0;
  if (retentionMs <= 0) return { deleted, more: false };
  for (let batch = 0; batch < bounds.maxBatches; batch++) {
    if (bounds.stop()) return { deleted, more: true };
    const n = await deleteExpired(exec, s, { retentionMs, limit: CLEANUP_BATCH });
    deleted += n;
    if (n < CLEANUP_BATCH) return { deleted, more: false };
  }
  return { deleted, more: true };
}

/**
 * One pass: expired idempotency keys, then expired dead letters, each in statements of CLEANUP_BATCH rows until
 * one comes back short or a bound ends the pass. Each table gets its own bound, so a backlog in one does not hold
 * up the other.
 */
export async function runCleanupPass(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
  bounds: CleanupBounds,
): Promise<CleanupPass> {
  const keys = await deleteInBatches(
    exec,
    s,
    deleteExpiredProcessedKeys,
    retention.processedRetentionMs,
    bounds,
  );
  const dead = await deleteInBatches(
    exec,
    s,
    deleteExpiredDeadDeliveries,
    retention.deadLetterRetentionMs,
    bounds,
  );
  return {
    processedKeysDeleted: keys.deleted,
    deadLettersDeleted: dead.deleted,
    more: keys.more || dead.more,
  };
}

/**
 * Deletes everything that has expired, in bounded statements, and returns when a batch of each table came back
 * short: `outbox.cleanup()` (a cron job, a test). The maintenance loop runs bounded passes instead.
 */
export async function runCleanup(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
): Promise<CleanupResult> {
  const pass = await runCleanupPass(exec, s, retention, { maxBatches: Infinity, stop: () => false });
  return { processedKeysDeleted: pass.processedKeysDeleted, deadLettersDeleted: pass.deadLettersDeleted };
}
