import type { Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { deleteExpiredDeadDeliveries } from './sql/dead-deliveries.js';
import { shareDeliveryIds } from './sql/locks.js';
import { deleteExpiredProcessedKeys } from './sql/processed.js';
import {
  countExpiredMessages,
  countExpired,
  deleteExpiredMessages,
  type MessageBatch,
} from './sql/retention.js';
import type { PurgeResult } from './types.js';

/**
 * Rows per DELETE (messages: looked at per statement). Each statement stays in the low milliseconds and holds at
 * most this many row locks. On a shared 2-core machine, 5,000 deleted 250,000 to 400,000 expired keys/s (1,000
 * about half that, 10,000 no more), and still 70,000 or more with a load average above 10: above the ~55,000 msg/s
 * the consumers drain, so a pass keeps up with any rate of once() they reach.
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
  retentionMs: number;
}

export interface CleanupBounds {
  /** Most statements per table in one pass. */
  maxBatches: number;
  /** Checked before every statement: true ends the pass (the loop stops, or its relay lost the lead). */
  stop: () => boolean;
}

export interface CleanupPass extends PurgeResult {
  /** The pass ended on a bound, not on a short batch: more rows may be due already. */
  more: boolean;
  /** Where the messages' next pass goes on (the last message id looked at), when `more`. */
  messageCursor: string;
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

/** One message batch in a transaction of its own, under the shared delivery-ids lock (see shareDeliveryIds). */
async function messageBatch(
  exec: Executor,
  s: SchemaName,
  p: { afterId: string; limit: number; retentionMs: number },
): Promise<MessageBatch> {
  await exec.query('BEGIN');
  try {
    await shareDeliveryIds(exec, s);
    const batch = await deleteExpiredMessages(exec, s, p);
    await exec.query('COMMIT');
    return batch;
  } catch (error) {
    await exec.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

/**
 * Messages in id order from `cursor`, CLEANUP_BATCH at a time, until a batch reaches messages younger than the
 * retention or the end of the table. Kept messages (a subscription still has work or a dead letter for them) are
 * stepped over and looked at again by the next pass that starts from the beginning.
 */
async function purgeMessages(
  exec: Executor,
  s: SchemaName,
  p: { retentionMs: number; cursor: string; dryRun: boolean; deadLetterRetentionMs: number },
  bounds: CleanupBounds,
): Promise<{
  messages: number;
  finishedDeliveries: number;
  failures: number;
  more: boolean;
  cursor: string;
}> {
  const total = { messages: 0, finishedDeliveries: 0, failures: 0, more: false, cursor: '0' };
  if (p.retentionMs <= 0) return total;
  let afterId = p.cursor;
  for (let batch = 0; batch < bounds.maxBatches; batch++) {
    if (bounds.stop()) return { ...total, more: true, cursor: afterId };
    const params = { afterId, limit: CLEANUP_BATCH, retentionMs: p.retentionMs };
    const result = p.dryRun
      ? await countExpiredMessages(exec, s, { ...params, deadLetterRetentionMs: p.deadLetterRetentionMs })
      : await messageBatch(exec, s, params);
    total.messages += result.messages;
    total.finishedDeliveries += result.finishedDeliveries;
    total.failures += result.failures;
    if (result.reachedRecent || result.scanned < CLEANUP_BATCH || result.lastId === null) return total;
    afterId = result.lastId;
  }
  return { ...total, more: true, cursor: afterId };
}

/**
 * One pass: expired idempotency keys, expired dead letters, then expired messages with their finished deliveries,
 * each in statements of CLEANUP_BATCH rows until one comes back short or a bound ends the pass. Each table gets its
 * own bound, so a backlog in one does not hold up the others. `exec` must be a connection of its own (the message
 * batches are transactions).
 */
export async function runCleanupPass(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
  bounds: CleanupBounds,
  messageCursor = '0',
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
  const messages = await purgeMessages(
    exec,
    s,
    { retentionMs: retention.retentionMs, cursor: messageCursor, dryRun: false, deadLetterRetentionMs: 0 },
    bounds,
  );
  return {
    processedKeys: keys.deleted,
    deadLetters: dead.deleted,
    messages: messages.messages,
    finishedDeliveries: messages.finishedDeliveries,
    failures: messages.failures,
    more: keys.more || dead.more || messages.more,
    messageCursor: messages.cursor,
  };
}

const UNBOUNDED: CleanupBounds = { maxBatches: Infinity, stop: () => false };

/**
 * Runs retention to the end (`outbox.purge()`, `pg-outbox purge`): returns when a batch of each table came back
 * short. A dry run counts what would go and removes nothing. The maintenance loop runs bounded passes instead.
 */
export async function runPurge(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
  dryRun: boolean,
): Promise<PurgeResult> {
  if (!dryRun) {
    const {
      more: _more,
      messageCursor: _cursor,
      ...result
    } = await runCleanupPass(exec, s, retention, UNBOUNDED);
    return result;
  }
  const messages = await purgeMessages(
    exec,
    s,
    {
      retentionMs: retention.retentionMs,
      cursor: '0',
      dryRun: true,
      deadLetterRetentionMs: retention.deadLetterRetentionMs,
    },
    UNBOUNDED,
  );
  return {
    messages: messages.messages,
    finishedDeliveries: messages.finishedDeliveries,
    failures: messages.failures,
    deadLetters:
      retention.deadLetterRetentionMs > 0
        ? await countExpired(exec, s, 'dead_deliveries', retention.deadLetterRetentionMs)
        : 0,
    processedKeys:
      retention.processedRetentionMs > 0
        ? await countExpired(exec, s, 'processed', retention.processedRetentionMs)
        : 0,
  };
}

/** Idempotency keys and dead letters only, to the end: `outbox.cleanup()`, kept from earlier versions. */
export async function runCleanup(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
): Promise<CleanupResult> {
  const pass = await runCleanupPass(exec, s, { ...retention, retentionMs: 0 }, UNBOUNDED);
  return { processedKeysDeleted: pass.processedKeys, deadLettersDeleted: pass.deadLetters };
}
