import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/** Tokens a take waits for at least: this many seconds' worth (a tenth of the rate), so claims are not one by one. */
const MIN_GRANT_SECONDS = 0.05;

export interface TokenGrant {
  /** Deliveries the caller may claim now (0: wait). */
  granted: number;
  /** With nothing granted: milliseconds until enough tokens have accrued. */
  waitMs: number;
}

/**
 * Takes up to `want` tokens from a rate-limited subscription's bucket (rate_buckets), refilled at the rate stored
 * with the subscription now, so a change by declareSubscription applies at once. Grants nothing until a minimum
 * grant has accrued (MIN_GRANT_SECONDS of the rate, at most `want` and the burst), then says how long to wait.
 * Lock: FOR UPDATE on the bucket's row, held for this statement only: the takes of all consumers of the
 * subscription, in every process, queue on it one after another, and each reads the tokens its predecessor left.
 * clock_timestamp() rather than now(): the refill is measured from when the row was locked, not from when the
 * statement began (it may have waited for the lock).
 * Null when the subscription has no bucket or no rate limit any more.
 */
export async function takeTokens(
  exec: Executor,
  s: SchemaName,
  subscriptionId: number,
  want: number,
): Promise<TokenGrant | null> {
  const rows = await exec.query<{ granted: number; wait_ms: number }>(
    `WITH bucket AS (
       SELECT b.subscription_id, at, sub.rate_limit AS rate,
              least(coalesce(sub.rate_burst, 1), b.tokens + sub.rate_limit * EXTRACT(EPOCH FROM at - b.refilled_at))
                AS available,
              least($2::int, floor(coalesce(sub.rate_burst, 1)), greatest(1, floor(sub.rate_limit * $3::float8)))
                AS minimum
       FROM ${s.quoted}.rate_buckets b
       JOIN ${s.quoted}.subscriptions sub ON sub.id = b.subscription_id
       CROSS JOIN LATERAL (SELECT clock_timestamp() AS at) t
       WHERE b.subscription_id = $1::int
         AND sub.rate_limit IS NOT NULL
       FOR UPDATE OF b
     ),
     decided AS (
       SELECT bucket.*,
              CASE WHEN available >= minimum THEN least($2::int, floor(available)::int) ELSE 0 END AS granted
       FROM bucket
     )
     UPDATE ${s.quoted}.rate_buckets b
     SET tokens = d.available - d.granted,
         refilled_at = d.at
     FROM decided d
     WHERE b.subscription_id = d.subscription_id
     RETURNING d.granted,
               CASE WHEN d.granted = 0 THEN ceil((d.minimum - d.available) / d.rate * 1000)::int ELSE 0 END
                 AS wait_ms`,
    [subscriptionId, want, MIN_GRANT_SECONDS],
  );
  const row = rows[0];
  return row === undefined ? null : { granted: row.granted, waitMs: Math.max(1, row.wait_ms) };
}

/** Gives back tokens a claim did not use (fewer deliveries were due than granted), up to the burst. */
export async function returnTokens(
  exec: Executor,
  s: SchemaName,
  subscriptionId: number,
  tokens: number,
): Promise<void> {
  await exec.query(
    `UPDATE ${s.quoted}.rate_buckets b
     SET tokens = least(coalesce(sub.rate_burst, 1), b.tokens + $2::float8)
     FROM ${s.quoted}.subscriptions sub
     WHERE b.subscription_id = $1::int
       AND sub.id = b.subscription_id`,
    [subscriptionId, tokens],
  );
}

/** Seed of the per-key advisory locks of one subscription: pg-outbox's class id, then the subscription id. */
function keyLockSeed(subscriptionId: number): string {
  return (1_870_000_003n * 65_536n + BigInt(subscriptionId)).toString();
}

/**
 * Key-limited subscriptions, first statement of a claim transaction (READ COMMITTED): locks up to `limit` due
 * deliveries and then the advisory lock of each of their keys, and returns their ids.
 * Rows: deliveries_due_idx in due order, FOR UPDATE SKIP LOCKED as in claimDeliveries, skipping keys that this
 * snapshot sees at their limit (one probe of deliveries_limited_key_idx per candidate with a key; the claim counts
 * again under the key's lock).
 * Keys: pg_advisory_xact_lock on a 64-bit hash of (subscription, key), until the transaction ends. Two claims of
 * the same key queue here; the second's next statement takes its snapshot after the first committed, so it counts
 * the deliveries the first leased. The locks are taken in hash order (volatile functions in the select list run
 * after ORDER BY), so two claims never wait on each other in a cycle; nothing else waits on these row locks
 * (acks touch leased rows, which are not due). A hash collision only makes two keys queue together.
 */
export async function lockLimitedCandidates(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; limit: number; keyConcurrency: number },
): Promise<string[]> {
  const rows = await exec.query<{ id: string }>(
    `WITH candidates AS MATERIALIZED (
       SELECT q.id, q.key
       FROM ${s.quoted}.deliveries q
       WHERE q.subscription_id = $1::int
         AND q.state = 'pending'
         AND q.available_at <= now()
         AND (q.key IS NULL OR (${inFlightOfKey(s, 'q.key')}) < $3::int)
       ORDER BY q.available_at, q.id
       LIMIT $2::int
       FOR UPDATE SKIP LOCKED
     )
     SELECT c.id,
            CASE WHEN c.key IS NOT NULL THEN pg_advisory_xact_lock(hashtextextended(c.key, $4::bigint)) END
     FROM candidates c
     ORDER BY hashtextextended(c.key, $4::bigint) NULLS FIRST`,
    [p.subscriptionId, p.limit, p.keyConcurrency, keyLockSeed(p.subscriptionId)],
  );
  return rows.map((r) => r.id);
}

/**
 * Deliveries of one key of subscription $1 in flight now: leased by a key-limited claim (limited_key) and the
 * lease not over. Reads deliveries_limited_key_idx, whose rows are the key's leased and retrying deliveries only.
 */
export function inFlightOfKey(s: SchemaName, key: string): string {
  return `SELECT count(*)
          FROM ${s.quoted}.deliveries f
          WHERE f.subscription_id = $1::int
            AND f.limited_key = ${key}
            AND f.leased_until > now()
            AND f.state = 'pending'`;
}
