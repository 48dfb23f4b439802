import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { keepsDeliveryId } from './dead-letters.js';

/**
 * Where publish time `since` falls among the ids, were publish times in id order: a binary search that probes the
 * primary key (the first message at or after the middle id, one row) about log2(id range) times, 22 at 3 million
 * ids. Each probe halves [lo, hi); it ends at `at`, and unless `at` is past the last id, the first message from `at`
 * on was published at or after `since`. Also the lowest and the highest id now.
 */
async function guessReplayStart(
  exec: Executor,
  s: SchemaName,
  since: Date,
): Promise<{ first: string | null; last: string | null; at: string | null }> {
  const rows = await exec.query<{ first: string | null; last: string | null; at: string | null }>(
    `WITH RECURSIVE ends AS (
       SELECT (SELECT min(id) FROM ${s.quoted}.messages) AS first_id,
              (SELECT max(id) FROM ${s.quoted}.messages) AS last_id
     ),
     search (lo, hi) AS (
       SELECT first_id, last_id + 1
       FROM ends
       WHERE first_id IS NOT NULL
       UNION ALL
       SELECT CASE WHEN p.created_at >= $1::timestamptz THEN s.lo ELSE s.lo + (s.hi - s.lo) / 2 + 1 END,
              CASE WHEN p.created_at >= $1::timestamptz THEN s.lo + (s.hi - s.lo) / 2 ELSE s.hi END
       FROM search s
       CROSS JOIN LATERAL (
         SELECT m.created_at
         FROM ${s.quoted}.messages m
         WHERE m.id >= s.lo + (s.hi - s.lo) / 2
         ORDER BY m.id
         LIMIT 1
       ) p
       WHERE s.lo < s.hi
     )
     SELECT e.first_id::text AS first,
            e.last_id::text AS last,
            (SELECT s.lo FROM search s WHERE s.lo >= s.hi)::text AS at
     FROM ends e`,
    [since],
  );
  return { first: rows[0]?.first ?? null, last: rows[0]?.last ?? null, at: rows[0]?.at ?? null };
}

/**
 * The lowest id below `at` of a message published at or after `since`, else the lowest from `at` on: the primary
 * key walked in id order from the start (Index Cond id < at, Filter created_at), which stops at the first match,
 * at `at` at the latest; then, from `at`, the first message, which the guess says is one.
 */
async function selectFirstAround(
  exec: Executor,
  s: SchemaName,
  since: Date,
  at: string,
): Promise<string | null> {
  const rows = await exec.query<{ first_id: string | null }>(
    `SELECT coalesce(
              (SELECT min(m.id)
               FROM ${s.quoted}.messages m
               WHERE m.created_at >= $1::timestamptz
                 AND m.id < $2::bigint),
              (SELECT min(m.id)
               FROM ${s.quoted}.messages m
               WHERE m.created_at >= $1::timestamptz
                 AND m.id >= $2::bigint)
            )::text AS first_id`,
    [since, at],
  );
  return rows[0]?.first_id ?? null;
}

/**
 * The lowest id of a message published at or after `since`, through messages_created_at_idx: a bitmap scan of the
 * BRIN block ranges that can hold such a publish time (the newest ones, as messages are appended in time order),
 * then min(id) over those rows. OFFSET 0 keeps the planner from turning min(id) into a walk of the primary key.
 */
async function selectFirstSince(exec: Executor, s: SchemaName, since: Date): Promise<string | null> {
  const rows = await exec.query<{ first_id: string | null }>(
    `SELECT min(x.id)::text AS first_id
     FROM (
       SELECT m.id
       FROM ${s.quoted}.messages m
       WHERE m.created_at >= $1::timestamptz
       OFFSET 0
     ) x`,
    [since],
  );
  return rows[0]?.first_id ?? null;
}

/**
 * Where a replay from `since` starts and ends: the lowest id of a message published at or after `since` (exact),
 * and the highest id now (later messages are the relay's to deliver). A plain min(id) WHERE created_at >= since is
 * planned as a walk of the primary key in id order that filters on created_at, which reads every message published
 * before `since` (80 ms at 500,000 rows, 460 ms at 3 million, when `since` is recent). Instead guessReplayStart
 * guesses where `since` falls, and the exact answer is read on the side of the guess that costs less: before it,
 * the primary key up to the guess (selectFirstAround); after it, the BRIN index (selectFirstSince). A message walked
 * in the primary key costs about half what one read through the bitmap does (measured), hence the factor 2.
 * Neither depends on the guess being right (publish times are transaction starts and only roughly follow ids): both
 * find every message published at or after `since`. So it reads about min(messages before `since`, twice the
 * messages after) rows: 0.6 ms instead of 460 ms for the newest 0.1% of 3 million. Separate statements, not one
 * with a CASE: the planner costs every branch, and at millions of rows the branch not taken would cost the
 * statement past jit_above_cost, and a JIT compilation (15 ms) into every call.
 */
export async function selectReplayRange(
  exec: Executor,
  s: SchemaName,
  since: Date,
): Promise<{ firstId: string | null; lastId: string | null }> {
  const g = await guessReplayStart(exec, s, since);
  if (g.first === null || g.last === null || g.at === null) return { firstId: null, lastId: null };
  const [first, at, last] = [BigInt(g.first), BigInt(g.at), BigInt(g.last)];
  const firstId =
    at <= last && at - first <= 2n * (last - at)
      ? await selectFirstAround(exec, s, since, g.at)
      : await selectFirstSince(exec, s, since);
  return { firstId, lastId: g.last };
}

/**
 * Whether retention has removed a message published at or after the later of `since` and `neededFrom` (null: since
 * alone), from its one-row retention_state: removed_through is the publish time of the newest message it removed.
 * Compared in SQL, at the microseconds Postgres keeps. See replaySince for why this is the rule.
 */
export async function selectReplayRetention(
  exec: Executor,
  s: SchemaName,
  p: { since: Date; neededFrom: Date | null },
): Promise<{ removedThrough: Date | null; missing: boolean }> {
  const rows = await exec.query<{ removed_through: Date | null; missing: boolean | null }>(
    `SELECT removed_through,
            removed_through >= greatest($1::timestamptz, $2::timestamptz) AS missing
     FROM ${s.quoted}.retention_state`,
    [p.since, p.neededFrom],
  );
  return { removedThrough: rows[0]?.removed_through ?? null, missing: rows[0]?.missing === true };
}

export interface ReplayBatch {
  scanned: number;
  lastId: string | null;
  replayed: number;
  /**
   * The oldest publish time among the next `ahead` messages after lastId (up to untilId), read while they were all
   * there: what the next batch checks retention against. Null: no message is left in the range.
   */
  aheadFrom: Date | null;
}

/**
 * Queues, for one subscription, a new delivery of every message among the next `limit` after `afterId` (up to
 * `untilId`, in id order through the primary key) that was published at or after `since`, matches the
 * subscription's topics, is not cancelled, and has been fanned out already: visible in the relay's done snapshot,
 * or relayed inside its open window (up to window_after_id; the window is walked in id order). A message the relay
 * has yet to fan out gets its delivery from the relay. The caller holds the delivery-ids lock exclusive (see
 * lockDeliveryIds), so no relay batch commits during this statement, its snapshot sees the relay's position as it
 * stays, and the new ids are drawn after every committed delivery id: ordered subscriptions get the replayed
 * messages after what their keys have pending, in message order among themselves.
 * A message the subscription still has pending, delayed or in flight is skipped: it is going to be delivered. A
 * dead letter of the message moves into deliveries (its history columns are kept, attempt 0), so a message is never
 * both pending and dead for one subscription. Which id it gets is requeueDeadLetters' rule (keepsDeliveryId): with
 * block_key_on_dead, a dead letter that stopped its key keeps its id (`kept`) and runs first again, ahead of the
 * deliveries it held back, as a replay by id does (those were never started, and wait for it through the claim's
 * per-key rule); an unordered one keeps its id too, as nothing depends on it; the others take new ids (`queued`)
 * in message order with the other replayed messages. Retention cannot remove a message while this runs: its
 * deletes hold the same lock shared. `ahead` (up to $6 messages after the batch, through the primary key) is what
 * the next batch checks retention against; see replaySince.
 */
export async function replayMessages(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; since: Date; afterId: string; untilId: string; limit: number; ahead: number },
): Promise<ReplayBatch> {
  const rows = await exec.query<{
    scanned: string;
    last_id: string | null;
    replayed: string;
    ahead_from: Date | null;
  }>(
    `WITH scanned AS MATERIALIZED (
       SELECT m.id, m.tx_id, m.topic, m.key, m.created_at
       FROM ${s.quoted}.messages m
       WHERE m.id > $2::bigint
         AND m.id <= $3::bigint
       ORDER BY m.id
       LIMIT $4::int
     ),
     sub AS (
       SELECT id, topics, topic_pattern, ordered, block_key_on_dead
       FROM ${s.quoted}.subscriptions
       WHERE id = $1::int
     ),
     chosen AS MATERIALIZED (
       SELECT sc.id, sc.key
       FROM scanned sc
       CROSS JOIN sub
       CROSS JOIN (SELECT * FROM ${s.quoted}.relay_state LIMIT 1) r -- one row; see audit_messages
       WHERE sc.created_at >= $5::timestamptz
         AND (sc.topic = ANY (sub.topics) OR sc.topic ~ sub.topic_pattern)
         AND (pg_visible_in_snapshot(sc.tx_id, r.done_snapshot)
              OR (r.target_snapshot IS NOT NULL
                  AND r.position_tx IS NULL
                  AND sc.id <= r.window_after_id
                  AND pg_visible_in_snapshot(sc.tx_id, r.target_snapshot)))
         AND NOT EXISTS (SELECT 1 FROM ${s.quoted}.cancellations c WHERE c.message_id = sc.id)
         AND NOT EXISTS (
           SELECT 1
           FROM ${s.quoted}.deliveries d
           WHERE d.message_id = sc.id
             AND d.subscription_id = sub.id
         )
     ),
     undead AS (
       DELETE FROM ${s.quoted}.dead_deliveries x
       WHERE x.subscription_id = $1::int
         AND x.message_id = ANY (ARRAY(SELECT id FROM chosen))
       RETURNING x.id, x.subscription_id, x.message_id, x.key, x.ordered_key, x.last_error, x.created_at,
                 x.first_attempt_at, x.last_attempt_at, x.consumer_id
     ),
     decided AS MATERIALIZED (
       SELECT u.*, ${keepsDeliveryId(s, 'u', 'sub.block_key_on_dead')} AS keep
       FROM undead u
       CROSS JOIN sub
     ),
     kept AS (
       INSERT INTO ${s.quoted}.deliveries
         (id, subscription_id, message_id, key, ordered_key, attempt, available_at, last_error, created_at,
          first_attempt_at, last_attempt_at, consumer_id)
       OVERRIDING SYSTEM VALUE
       SELECT u.id, u.subscription_id, u.message_id, u.key, u.ordered_key, 0, now(), u.last_error, u.created_at,
              u.first_attempt_at, u.last_attempt_at, u.consumer_id
       FROM decided u
       WHERE u.keep
       RETURNING 1
     ),
     queued AS (
       INSERT INTO ${s.quoted}.deliveries
         (subscription_id, message_id, key, ordered_key, available_at, last_error, first_attempt_at,
          last_attempt_at, consumer_id)
       SELECT sub.id, c.id, c.key, CASE WHEN sub.ordered THEN c.key END, now(), u.last_error,
              u.first_attempt_at, u.last_attempt_at, u.consumer_id
       FROM chosen c
       CROSS JOIN sub
       LEFT JOIN decided u ON u.message_id = c.id
       WHERE u.keep IS NOT TRUE
       ORDER BY c.id
       ON CONFLICT (message_id, subscription_id) DO NOTHING
       RETURNING 1
     ),
     ahead AS (
       SELECT m.created_at
       FROM ${s.quoted}.messages m
       WHERE m.id > (SELECT coalesce(max(id), $2::bigint) FROM scanned)
         AND m.id <= $3::bigint
       ORDER BY m.id
       LIMIT $6::int
     )
     SELECT (SELECT count(*) FROM scanned)::text AS scanned,
            (SELECT max(id) FROM scanned)::text AS last_id,
            ((SELECT count(*) FROM kept) + (SELECT count(*) FROM queued))::text AS replayed,
            (SELECT min(created_at) FROM ahead) AS ahead_from`,
    [p.subscriptionId, p.afterId, p.untilId, p.limit, p.since, p.ahead],
  );
  const row = rows[0];
  return {
    scanned: Number(row?.scanned ?? 0),
    lastId: row?.last_id ?? null,
    replayed: Number(row?.replayed ?? 0),
    aheadFrom: row?.ahead_from ?? null,
  };
}
