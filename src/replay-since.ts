import type pg from 'pg';
import { pgExecutor, withTransaction } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';
import { lockDeliveryIds } from './sql/locks.js';
import { notifySubscription } from './sql/dead-letters.js';
import { replayMessages, selectReplayRange } from './sql/replay.js';
import { selectRemovedThrough } from './sql/retention.js';
import { selectSubscriptionId } from './sql/subscriptions.js';
import type { ReplayResult } from './types.js';

/** Messages looked at per transaction: each holds the delivery-ids lock (pausing the relay) for one statement. */
const REPLAY_BATCH = 1_000;

export interface ReplaySince {
  subscription: string;
  since: Date;
  /** Go on after this message id (an earlier call's `next`). */
  after: string | undefined;
  /** Most messages to look at in this call. */
  limit: number;
}

async function assertRetained(pool: pg.Pool, s: SchemaName, since: Date): Promise<void> {
  const removedThrough = await selectRemovedThrough(pgExecutor(pool), s);
  if (removedThrough !== null && since.getTime() <= removedThrough.getTime()) {
    throw new OutboxError(
      'OUTBOX_REPLAY_BEYOND_RETENTION',
      `Cannot replay from ${since.toISOString()}: retention has removed messages published up to ` +
        `${removedThrough.toISOString()}; replay from a later time (or raise retentionMs to keep more)`,
      { value: since.toISOString() },
    );
  }
}

/**
 * Re-delivers to one subscription the messages of its topics published since `since`, oldest first, in
 * transactions of REPLAY_BATCH messages: each commits what it queued, so a replay that is interrupted (or stops at
 * `limit`) goes on from the `next` it returned, without queuing the earlier ones again. Ends at the newest message
 * that existed when it began; later ones are the relay's.
 */
export async function replaySince(pool: pg.Pool, s: SchemaName, r: ReplaySince): Promise<ReplayResult> {
  const subscriptionId = await selectSubscriptionId(pgExecutor(pool), s, r.subscription);
  if (subscriptionId === null) {
    throw new OutboxError(
      'OUTBOX_UNKNOWN_SUBSCRIPTION',
      `No subscription named "${r.subscription}" in schema "${s.name}"`,
      { value: r.subscription },
    );
  }
  await assertRetained(pool, s, r.since);
  const range = await selectReplayRange(pgExecutor(pool), s, r.since);
  if (range.firstId === null || range.lastId === null) return { replayed: 0, next: null };
  let afterId = r.after ?? (BigInt(range.firstId) - 1n).toString();
  let replayed = 0;
  let looked = 0;
  while (looked < r.limit) {
    const limit = Math.min(REPLAY_BATCH, r.limit - looked);
    const batch = await withTransaction(pool, async (exec) => {
      await lockDeliveryIds(exec, s);
      const result = await replayMessages(exec, s, {
        subscriptionId,
        since: r.since,
        afterId,
        untilId: range.lastId ?? afterId,
        limit,
      });
      if (result.replayed > 0) await notifySubscription(exec, s, subscriptionId);
      return result;
    });
    replayed += batch.replayed;
    looked += batch.scanned;
    if (batch.lastId === null || batch.scanned < limit) return { replayed, next: null };
    afterId = batch.lastId;
  }
  return { replayed, next: afterId === range.lastId ? null : afterId };
}
