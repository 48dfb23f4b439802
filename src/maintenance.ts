import type { Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { deleteExpiredProcessedKeys } from './sql/processed.js';

const BATCH = 1000;
/** Upper bound of one pass, so a large backlog of expired keys is worked off over several passes. */
const MAX_BATCHES_PER_PASS = 50;

export interface CleanupResult {
  /** Idempotency keys deleted because they were older than the retention. */
  processedKeysDeleted: number;
}

/**
 * One bounded cleanup pass: idempotency keys older than the retention, in batches. The active relay runs it every
 * `maintenanceIntervalMs`; `outbox.cleanup()` runs it on demand (a cron job, a test).
 */
export async function runCleanup(exec: Executor, s: SchemaName, retentionMs: number): Promise<CleanupResult> {
  let processedKeysDeleted = 0;
  if (retentionMs <= 0) return { processedKeysDeleted };
  for (let batch = 0; batch < MAX_BATCHES_PER_PASS; batch++) {
    const deleted = await deleteExpiredProcessedKeys(exec, s, { retentionMs, limit: BATCH });
    processedKeysDeleted += deleted;
    if (deleted < BATCH) break;
  }
  return { processedKeysDeleted };
}
