import type { Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { deleteExpiredDeadDeliveries } from './sql/dead-deliveries.js';
import { shareDeliveryIds } from './sql/locks.js';
import { deleteExpiredProcessedKeys } from './sql/processed.js';
import {
  countExpiredMessages,
  countExpired,
  deleteExpiredMessages,
  selectSweepStart,
  type MessageBatch,
  type MessageBatchParams,
} from './sql/retention.js';
import type { PurgeResult } from './types.js';
import { advancePass, beginPass, finishPass, lowerId, type MessagePosition } from './message-position.js';

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
  /** Message rows looked at (each batch reads up to CLEANUP_BATCH through the primary key). */
  scanned: number;
  /** The message part is a sweep: it re-read the kept range (see MessagePosition), not only what came since. */
  sweep: boolean;
  /** Where the next pass over the messages starts. */
  position: MessagePosition;
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
async function messageBatch(exec: Executor, s: SchemaName, p: MessageBatchParams): Promise<MessageBatch> {
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

/** What a walk over the messages removed and found; the ids are positions: the next batch looks after them. */
interface MessageWalk {
  messages: number;
  finishedDeliveries: number;
  failures: number;
  scanned: number;
  more: boolean;
  /** The last message id looked at (the start, when none was): where a walk cut short goes on. */
  cursor: string;
  /** Before the first message above `settledAfter` that is too young or not fanned out (null: none). */
  unsettledAfter: string | null;
  /** Before the lowest message looked at and left in place (null: none). */
  remainingAfter: string | null;
}

const emptyWalk = (cursor: string): MessageWalk => ({
  messages: 0,
  finishedDeliveries: 0,
  failures: 0,
  scanned: 0,
  more: false,
  cursor,
  unsettledAfter: null,
  remainingAfter: null,
});

const removedBy = (walk: MessageWalk) => ({
  messages: walk.messages,
  finishedDeliveries: walk.finishedDeliveries,
  failures: walk.failures,
});

/**
 * Messages in id order from `cursor`, CLEANUP_BATCH at a time, until a batch reaches messages younger than the
 * retention (above `settledAfter`) or the end of the table. Kept messages (a subscription still has work or a dead
 * letter for them) are stepped over.
 */
async function purgeMessages(
  exec: Executor,
  s: SchemaName,
  p: {
    retentionMs: number;
    cursor: string;
    settledAfter: string;
    dryRun: boolean;
    deadLetterRetentionMs: number;
  },
  bounds: CleanupBounds,
): Promise<MessageWalk> {
  const walk = emptyWalk(p.cursor);
  if (p.retentionMs <= 0) return walk;
  for (let batch = 0; batch < bounds.maxBatches; batch++) {
    if (bounds.stop()) return { ...walk, more: true };
    const params = {
      afterId: walk.cursor,
      limit: CLEANUP_BATCH,
      retentionMs: p.retentionMs,
      settledAfter: p.settledAfter,
    };
    const result = p.dryRun
      ? await countExpiredMessages(exec, s, { ...params, deadLetterRetentionMs: p.deadLetterRetentionMs })
      : await messageBatch(exec, s, params);
    walk.messages += result.messages;
    walk.finishedDeliveries += result.finishedDeliveries;
    walk.failures += result.failures;
    walk.scanned += result.scanned;
    walk.cursor = result.lastId ?? walk.cursor;
    // Batches go up in id order: the first one that names an unsettled message names the lowest.
    walk.unsettledAfter ??= result.unsettledAfter;
    walk.remainingAfter = lowerId(walk.remainingAfter, result.remainingAfter);
    if (result.reachedRecent || result.scanned < CLEANUP_BATCH) return walk;
  }
  return { ...walk, more: true };
}

/** The message part of a maintenance pass: from `position`, to the next one. */
async function walkMessages(
  exec: Executor,
  s: SchemaName,
  retentionMs: number,
  bounds: CleanupBounds,
  position: MessagePosition,
): Promise<MessageWalk & { sweep: boolean; position: MessagePosition }> {
  if (retentionMs <= 0) return { ...emptyWalk(position.frontier), sweep: false, position };
  const pass =
    position.pass ?? beginPass(position, position.untilSweep <= 0 ? await selectSweepStart(exec, s) : null);
  const walk = await purgeMessages(
    exec,
    s,
    {
      retentionMs,
      cursor: pass.cursor,
      settledAfter: position.frontier,
      dryRun: false,
      deadLetterRetentionMs: 0,
    },
    bounds,
  );
  const progress = advancePass(pass, walk);
  const next = walk.more ? { ...position, pass: progress } : finishPass(position, progress);
  return { ...walk, sweep: pass.sweep !== null, position: next };
}

/** Expired idempotency keys, then expired dead letters, each with a bound of its own. */
async function cleanupTables(exec: Executor, s: SchemaName, retention: Retention, bounds: CleanupBounds) {
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
  return { processedKeys: keys.deleted, deadLetters: dead.deleted, more: keys.more || dead.more };
}

/**
 * One pass of the maintenance loop: expired idempotency keys, expired dead letters, then expired messages with
 * their finished deliveries from `position`, each in statements of CLEANUP_BATCH rows until one comes back short
 * or a bound ends the pass. Each table gets its own bound, so a backlog in one does not hold up the others. `exec`
 * must be a connection of its own (the message batches are transactions).
 */
export async function runCleanupPass(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
  bounds: CleanupBounds,
  position: MessagePosition,
): Promise<CleanupPass> {
  const tables = await cleanupTables(exec, s, retention, bounds);
  const messages = await walkMessages(exec, s, retention.retentionMs, bounds, position);
  return {
    processedKeys: tables.processedKeys,
    deadLetters: tables.deadLetters,
    messages: messages.messages,
    finishedDeliveries: messages.finishedDeliveries,
    failures: messages.failures,
    more: tables.more || messages.more,
    scanned: messages.scanned,
    sweep: messages.sweep,
    position: messages.position,
  };
}

const UNBOUNDED: CleanupBounds = { maxBatches: Infinity, stop: () => false };

/**
 * Runs retention to the end (`outbox.purge()`, `pg-outbox purge`), every message from the first: returns when a
 * batch of each table came back short. A dry run counts what would go and removes nothing. The maintenance loop
 * runs bounded passes from its position instead.
 */
export async function runPurge(
  exec: Executor,
  s: SchemaName,
  retention: Retention,
  dryRun: boolean,
): Promise<PurgeResult> {
  const walk = { retentionMs: retention.retentionMs, cursor: '0', settledAfter: '0' };
  if (!dryRun) {
    const tables = await cleanupTables(exec, s, retention, UNBOUNDED);
    const messages = await purgeMessages(exec, s, { ...walk, dryRun, deadLetterRetentionMs: 0 }, UNBOUNDED);
    return { ...removedBy(messages), deadLetters: tables.deadLetters, processedKeys: tables.processedKeys };
  }
  const messages = await purgeMessages(
    exec,
    s,
    { ...walk, dryRun, deadLetterRetentionMs: retention.deadLetterRetentionMs },
    UNBOUNDED,
  );
  return {
    ...removedBy(messages),
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
  const tables = await cleanupTables(exec, s, retention, UNBOUNDED);
  return { processedKeysDeleted: tables.processedKeys, deadLettersDeleted: tables.deadLetters };
}
