import type pg from 'pg';
import { pgExecutor, withTransaction, type Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';
import { lockDeliveryIds } from './sql/locks.js';
import { notifySubscription } from './sql/dead-letters.js';
import { replayMessages, selectReplayRange, selectReplayRetention, type ReplayBatch } from './sql/replay.js';
import { selectSubscriptionId } from './sql/subscriptions.js';
import type { ReplayResult } from './types.js';

/** Messages looked at per transaction: each holds the delivery-ids lock (pausing the relay) for one statement. */
const REPLAY_BATCH = 1_000;

export interface ReplaySince {
  subscription: string;
  since: Date;
  /** Go on from an earlier call's `next` (or after a bare message id, as `next` used to be); see parseAfter. */
  after: string | undefined;
  /** Most messages to look at in this call. */
  limit: number;
}

/** Where a replay stands between two batches. */
interface Position {
  /** The last message id looked at. */
  afterId: string;
  /** The end of the range: the newest message id when the replay began. */
  untilId: string;
  /** The oldest publish time the rest of the range needs retained (see replaySince); null: just `since`. */
  neededFrom: Date | null;
}

/** What `next` carries: a position with everything known. */
type Next = Position & { neededFrom: Date };

/** A parsed `after`. A bare message id carries neither the end (null: the newest message now) nor neededFrom. */
type After = Omit<Position, 'untilId'> & { untilId: string | null };

const isId = (v: string | undefined): v is string =>
  v !== undefined && /^[1-9]\d{0,18}$/.test(v) && BigInt(v) <= 9223372036854775807n;

/**
 * `next` is "<afterId>:<untilId>:<neededFrom in ms since the epoch>", opaque to callers and checked on the way in.
 * The milliseconds are Postgres's microseconds rounded down, which can only make the retention check stricter.
 */
function formatNext(p: Next): string {
  return `${p.afterId}:${p.untilId}:${p.neededFrom.getTime()}`;
}

/**
 * An earlier call's `next`, or a bare message id (what `next` was before it carried the end), which goes on to the
 * newest message now and is checked against `since` alone, as it was then. Anything else: OUTBOX_INVALID_OPTION.
 */
function parseAfter(after: unknown): After | undefined {
  if (after === undefined) return undefined;
  const parts = typeof after === 'string' ? after.split(':') : [];
  const [afterId, untilId, ms] = parts;
  if (parts.length === 1 && isId(afterId)) return { afterId, untilId: null, neededFrom: null };
  const neededFrom = new Date(/^-?\d{1,15}$/.test(ms ?? '') ? Number(ms) : NaN);
  if (
    parts.length !== 3 ||
    !isId(afterId) ||
    !isId(untilId) ||
    BigInt(untilId) <= BigInt(afterId) ||
    Number.isNaN(neededFrom.getTime())
  ) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'replay `after` must be the `next` of an earlier replay (or a message id, a positive integer)',
      { value: after },
    );
  }
  return { afterId, untilId, neededFrom };
}

async function subscriptionIdOf(pool: pg.Pool, s: SchemaName, name: string): Promise<number> {
  const subscriptionId = await selectSubscriptionId(pgExecutor(pool), s, name);
  if (subscriptionId === null) {
    throw new OutboxError(
      'OUTBOX_UNKNOWN_SUBSCRIPTION',
      `No subscription named "${name}" in schema "${s.name}"`,
      {
        value: name,
      },
    );
  }
  return subscriptionId;
}

/** Throws OUTBOX_REPLAY_BEYOND_RETENTION unless what the replay still needs is retained (see replaySince). */
async function assertRetained(
  exec: Executor,
  s: SchemaName,
  since: Date,
  at: Position | null,
): Promise<void> {
  const neededFrom = at?.neededFrom ?? null;
  const { removedThrough, missing } = await selectReplayRetention(exec, s, { since, neededFrom });
  if (!missing || removedThrough === null) return;
  const through = removedThrough.toISOString();
  if (at === null || neededFrom === null) {
    throw new OutboxError(
      'OUTBOX_REPLAY_BEYOND_RETENTION',
      `Cannot replay from ${since.toISOString()}: retention has removed messages published up to ${through}; ` +
        `replay from a later time (or raise retentionMs to keep more)`,
      { value: since.toISOString() },
    );
  }
  throw new OutboxError(
    'OUTBOX_REPLAY_BEYOND_RETENTION',
    `Cannot go on with the replay from ${since.toISOString()} after message ${at.afterId}: retention has ` +
      `removed messages published up to ${through}, which the rest of it needs; replay again from a later ` +
      `time (or raise retentionMs to keep more)`,
    { value: { since: since.toISOString(), after: at.afterId } },
  );
}

/** Where a call begins: the position `after` carries, or the range from `since` (null: nothing to replay). */
async function startOf(
  pool: pg.Pool,
  s: SchemaName,
  since: Date,
  after: After | undefined,
): Promise<Position | null> {
  if (after?.untilId != null) return { ...after, untilId: after.untilId };
  // A new replay, or a bare message id: checked against `since` before anything else is read.
  await assertRetained(pgExecutor(pool), s, since, null);
  const range = await selectReplayRange(pgExecutor(pool), s, since);
  if (range.firstId === null || range.lastId === null) return null;
  const afterId = after?.afterId ?? (BigInt(range.firstId) - 1n).toString();
  return { afterId, untilId: range.lastId, neededFrom: null };
}

/** One batch in a transaction of its own, under the delivery-ids lock exclusive (see lockDeliveryIds). */
async function replayBatch(
  pool: pg.Pool,
  s: SchemaName,
  p: { subscriptionId: number; since: Date; at: Position; limit: number },
): Promise<ReplayBatch> {
  return withTransaction(pool, async (exec) => {
    await lockDeliveryIds(exec, s);
    await assertRetained(exec, s, p.since, p.at);
    const batch = await replayMessages(exec, s, {
      subscriptionId: p.subscriptionId,
      since: p.since,
      afterId: p.at.afterId,
      untilId: p.at.untilId,
      limit: p.limit,
      ahead: REPLAY_BATCH,
    });
    if (batch.replayed > 0) await notifySubscription(exec, s, p.subscriptionId);
    return batch;
  });
}

/**
 * Re-delivers to one subscription the messages of its topics published since `since`, oldest first, in
 * transactions of REPLAY_BATCH messages: each commits what it queued, so a replay that is interrupted (or stops at
 * `limit`) goes on from the `next` it returned, without queuing the earlier ones again. Ends at the newest message
 * that existed when it began, which `next` carries to the calls that go on: later ones are the relay's.
 *
 * Retention. The replay is complete only if retention removed none of the messages it has yet to look at, and all
 * that is known of what retention removed is removed_through, the publish time of the newest message it removed.
 * - Before anything is read, removed_through must be before `since`.
 * - Between two batches, of one call or of two, retention may go on. So each batch checks again, inside its
 *   transaction after the delivery-ids lock (retention's deletes hold it shared: none is under way, every one
 *   that committed is visible, and none starts until the batch commits): removed_through must be before the later
 *   of `since` and neededFrom, the oldest publish time among the REPLAY_BATCH messages that followed the previous
 *   batch, read by that batch under the lock, while they were all there. Had retention removed one of them, or a
 *   later one (publish times grow with ids), removed_through would have reached neededFrom: the batch throws
 *   OUTBOX_REPLAY_BEYOND_RETENTION before it queues anything. Had it removed only messages the replay has looked
 *   at already, removed_through stays before neededFrom and the replay goes on.
 * - Limits of the rule. Messages of one producer transaction share their publish time, so a removal that reached
 *   the transaction of the last message looked at stops the replay even if it removed nothing after it (safe).
 *   A publish time is the start of its transaction, so a message whose transaction began before those of all the
 *   REPLAY_BATCH messages ahead of it, and that retention removed alone, would go unnoticed (not safe, but it
 *   takes a producer transaction that stays open while a thousand messages are published after its own).
 * - A bare message id in `after` has no neededFrom: it is checked against `since`, as it was.
 */
export async function replaySince(pool: pg.Pool, s: SchemaName, r: ReplaySince): Promise<ReplayResult> {
  const after = parseAfter(r.after);
  const subscriptionId = await subscriptionIdOf(pool, s, r.subscription);
  let at = await startOf(pool, s, r.since, after);
  if (at === null) return { replayed: 0, next: null };
  let replayed = 0;
  let looked = 0;
  for (;;) {
    const limit = Math.min(REPLAY_BATCH, r.limit - looked);
    const batch = await replayBatch(pool, s, { subscriptionId, since: r.since, at, limit });
    replayed += batch.replayed;
    looked += batch.scanned;
    const { lastId, aheadFrom } = batch;
    // Nothing is left when the batch came back short or no message follows it (aheadFrom null).
    if (lastId === null || aheadFrom === null || batch.scanned < limit) return { replayed, next: null };
    const next: Next = { afterId: lastId, untilId: at.untilId, neededFrom: aheadFrom };
    if (looked >= r.limit) return { replayed, next: formatNext(next) };
    at = next;
  }
}
