import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { inFlightOfKey } from './flow.js';

/** A claimed delivery joined with its message. */
export interface ClaimedRow {
  delivery_id: string;
  message_id: string;
  state: 'pending' | 'dead' | 'cancelled';
  attempt: number;
  last_error: string | null;
  /** Null only on a 'dead' row whose message no longer exists (the message columns come from a LEFT JOIN). */
  topic: string | null;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  created_at: Date;
  deliver_at: Date | null;
}

const LEASE_EXPIRED_ERROR = 'lease expired before an ack: the consumer crashed, stalled or timed out';
const MESSAGE_MISSING_ERROR = 'the message no longer exists in the messages table';

/**
 * Claims up to `limit` due deliveries of one subscription and leases them for `leaseMs`.
 *
 * Index: deliveries_due_idx (subscription_id, available_at, id) WHERE state = 'pending', read in order and cut
 * at LIMIT, so the cost does not grow with rows that are not due (delayed, retrying, leased).
 * Lock: FOR UPDATE SKIP LOCKED on the chosen rows. Competing consumers take disjoint rows without waiting; a row
 * another claimer holds is skipped, never handed out twice, and its lease change commits before it is visible.
 * The lock returns each row's newest version, so the outcome below is decided on the row as it is now, not as the
 * statement's snapshot saw it (a release or a retry may have committed in between).
 * Lease: available_at moves to the lease end, so a leased row leaves the due range until the lease expires and
 * is then claimed again. attempt + 1 is the fencing token every ack must present. The same UPDATE records the
 * attempt's time and `consumer` (host:pid:instance) for the audit trail: columns outside every index.
 * Rows that are not handed out leave deliveries, which holds only pending work: a row whose message was cancelled
 * moves to completed_deliveries (outcome 'cancelled'); one whose previous lease expired at maxAttempts (a handler
 * that crashes its process every time still ends) or whose message was deleted from messages (it would block the
 * head of the queue) moves to dead_deliveries under its delivery id. Each move is a DELETE and an INSERT in this
 * statement, so every snapshot sees the row in exactly one of the tables.
 * Ordered subscriptions: a row is claimable only while no earlier delivery of its key is in deliveries (pending,
 * which includes leased and retrying), probed per candidate through deliveries_ordered_key_idx, and, when the
 * subscription's block_key_on_dead is set, none lies dead (dead_deliveries_ordered_key_idx). That earlier row
 * stays in deliveries while leased or retrying, and a claimer that holds it locked has not moved it yet, so a
 * concurrent claim still sees it and skips the successor: two deliveries of one key are never leased at once, and
 * a key's rows are leased in id order, which is relay order.
 */
export async function claimDeliveries(
  exec: Executor,
  s: SchemaName,
  p: {
    subscriptionId: number;
    limit: number;
    leaseMs: number;
    maxAttempts: number;
    consumer: number;
    keyLimit?: KeyLimit;
  },
): Promise<ClaimedRow[]> {
  const limited = p.keyLimit !== undefined;
  return exec.query<ClaimedRow>(
    `WITH ${limited ? admittedCte(s) : ''}due AS (
       SELECT q.id, q.subscription_id, q.message_id, q.attempt, q.leased_until, q.consumer_id
       FROM ${s.quoted}.deliveries q
       WHERE q.subscription_id = $1::int
         AND q.state = 'pending'
         AND q.available_at <= now()
         ${limited ? 'AND q.id = ANY (ARRAY(SELECT a.id FROM admitted a))' : ''}
         -- Ordered subscriptions: only the head of each key. deliveries holds only pending rows, so any earlier
         -- row of the key is unfinished. The inequality on id keeps each probe a correlated index probe (an
         -- EXISTS with only equalities may be turned into a hashed subplan over the whole table).
         AND (q.ordered_key IS NULL OR (
           NOT EXISTS (
             SELECT 1
             FROM ${s.quoted}.deliveries e
             WHERE e.subscription_id = q.subscription_id
               AND e.ordered_key = q.ordered_key
               AND e.id < q.id
               -- A process of an earlier version may still mark rows dead or cancelled in place.
               AND e.state = 'pending'
           )
           AND NOT EXISTS (
             SELECT 1
             FROM ${s.quoted}.dead_deliveries x
             -- Read once per statement (an uncorrelated sub-select): when false the probe is never run.
             WHERE (SELECT sub.block_key_on_dead FROM ${s.quoted}.subscriptions sub WHERE sub.id = $1::int)
               AND x.subscription_id = q.subscription_id
               AND x.ordered_key = q.ordered_key
               AND x.id < q.id
           )
         ))
       ORDER BY q.available_at, q.id
       LIMIT $2::int
       FOR UPDATE SKIP LOCKED
     ),
     -- The outcome of each locked row, from primary-key probes (LATERAL ... LIMIT 1) of cancellations and
     -- messages, never a hash of either whole table. Materialized: each write below reads it.
     verdict AS MATERIALIZED (
       SELECT due.id,
              CASE WHEN c.cancelled THEN 'cancelled'
                   WHEN m.present IS NULL OR due.attempt >= $4::int THEN 'dead'
                   ELSE 'pending'
              END AS outcome,
              m.present IS NULL AS missing
       FROM due
       LEFT JOIN LATERAL (
         SELECT true AS cancelled
         FROM ${s.quoted}.cancellations cc
         WHERE cc.message_id = due.message_id
         LIMIT 1
       ) c ON true
       LEFT JOIN LATERAL (
         SELECT true AS present
         FROM ${s.quoted}.messages mm
         WHERE mm.id = due.message_id
         LIMIT 1
       ) m ON true
     ),
     -- Each write reaches its rows by primary key through an id array whose length the planner cannot see, so it
     -- never prefers a scan of the whole table (which a join here got once the table held ~50,000 rows), nor a
     -- per-row rescan of the id list (which it got with stale statistics). The rows are ours (locked above), so
     -- every write finds all of its rows.
     leased AS (
       UPDATE ${s.quoted}.deliveries d
       SET attempt = d.attempt + 1,
           available_at = now() + $3::int * interval '1 millisecond',
           leased_until = now() + $3::int * interval '1 millisecond',
           last_error = CASE WHEN d.leased_until IS NOT NULL THEN $5::text ELSE d.last_error END,
           -- NULL until a second attempt: a delivery done at its first attempt carries one timestamp.
           first_attempt_at = coalesce(d.first_attempt_at, d.last_attempt_at),
           last_attempt_at = now(),
           consumer_id = $7::int
           ${limited ? ', limited_key = d.key' : ''}
       WHERE d.id = ANY (ARRAY(SELECT v.id FROM verdict v WHERE v.outcome = 'pending'))
       RETURNING d.id, d.message_id, 'pending'::text AS state, d.attempt, d.last_error
     ),
     died AS (
       DELETE FROM ${s.quoted}.deliveries d
       WHERE d.id = ANY (ARRAY(SELECT v.id FROM verdict v WHERE v.outcome = 'dead'))
       RETURNING d.id, d.subscription_id, d.message_id, d.key, d.ordered_key, d.attempt, d.created_at,
                 d.first_attempt_at, d.last_attempt_at, d.consumer_id,
                 CASE WHEN d.id = ANY (ARRAY(SELECT v.id FROM verdict v WHERE v.missing)) THEN $6::text
                      WHEN d.leased_until IS NOT NULL THEN $5::text
                      ELSE d.last_error
                 END AS last_error
     ),
     dead AS (
       INSERT INTO ${s.quoted}.dead_deliveries
         (id, subscription_id, message_id, key, ordered_key, attempt, last_error, created_at,
          first_attempt_at, last_attempt_at, consumer_id)
       SELECT id, subscription_id, message_id, key, ordered_key, attempt, last_error, created_at,
              first_attempt_at, last_attempt_at, consumer_id
       FROM died
     ),
     dropped AS (
       DELETE FROM ${s.quoted}.deliveries d
       WHERE d.id = ANY (ARRAY(SELECT v.id FROM verdict v WHERE v.outcome = 'cancelled'))
       RETURNING d.id, d.subscription_id, d.message_id, d.key, d.attempt, d.last_error, d.created_at,
                 d.first_attempt_at, d.last_attempt_at, d.consumer_id
     ),
     cancelled AS (
       INSERT INTO ${s.quoted}.completed_deliveries
         (id, subscription_id, message_id, key, attempt, last_error, created_at, outcome,
          first_attempt_at, last_attempt_at, consumer_id)
       SELECT id, subscription_id, message_id, key, attempt, last_error, created_at, 'cancelled',
              first_attempt_at, last_attempt_at, consumer_id
       FROM dropped
     ),
     -- A row still carrying a lease was not settled by the consumer that claimed it: that attempt failed (crash,
     -- stall, timeout) and is recorded in the failure history under the consumer that lost it. Usually no row.
     expired AS (
       INSERT INTO ${s.quoted}.delivery_failures
         (message_id, subscription_id, delivery_id, attempt, error, consumer_id)
       SELECT due.message_id, due.subscription_id, due.id, due.attempt, $5::text, due.consumer_id
       FROM due
       WHERE due.leased_until IS NOT NULL
     ),
     claimed AS (
       SELECT id, message_id, state, attempt, last_error FROM leased
       UNION ALL
       SELECT id, message_id, 'dead', attempt, last_error FROM died
       UNION ALL
       SELECT id, message_id, 'cancelled', attempt, last_error FROM dropped
     )
     -- The payload of each claimed row: a primary-key probe per row (LATERAL ... LIMIT 1), never a hash of the
     -- whole messages table.
     SELECT c.id AS delivery_id, c.message_id, c.state, c.attempt, c.last_error,
            m.topic, m.key, m.payload, m.headers, m.created_at, m.deliver_at
     FROM claimed c
     LEFT JOIN LATERAL (
       SELECT mm.topic, mm.key, mm.payload, mm.headers, mm.created_at, mm.deliver_at
       FROM ${s.quoted}.messages mm
       WHERE mm.id = c.message_id
       LIMIT 1
     ) m ON true`,
    [
      p.subscriptionId,
      p.limit,
      p.leaseMs,
      p.maxAttempts,
      LEASE_EXPIRED_ERROR,
      MESSAGE_MISSING_ERROR,
      p.consumer,
      ...(p.keyLimit === undefined ? [] : [p.keyLimit.ids, p.keyLimit.perKey]),
    ],
  );
}

/** A key-limited claim: the candidates its transaction locked (lockLimitedCandidates) and the limit per key. */
export interface KeyLimit {
  ids: string[];
  perKey: number;
}

/**
 * Key-limited claims: of the candidates ($8), those that fit their key's limit ($9): a key's candidates in due
 * order, as many as the limit leaves beside the key's deliveries in flight. Runs under the keys' advisory locks
 * (see lockLimitedCandidates), in a statement whose snapshot is newer than every claim of these keys that
 * committed before: the count is exact, and no other claim of these keys can lease meanwhile. The candidates are
 * this transaction's row locks, so due's FOR UPDATE SKIP LOCKED takes them all.
 */
function admittedCte(s: SchemaName): string {
  return `admitted AS (
       SELECT c.id
       FROM (
         SELECT q.id, q.key, row_number() OVER (PARTITION BY q.key ORDER BY q.available_at, q.id) AS rank
         FROM ${s.quoted}.deliveries q
         WHERE q.id = ANY ($8::bigint[])
       ) c
       WHERE c.key IS NULL OR c.rank + (${inFlightOfKey(s, 'c.key')}) <= $9::int
     ),
     `;
}

/** Milliseconds until the subscription's next pending delivery is due (null when none), by Postgres's clock. */
export async function selectNextDueMs(
  exec: Executor,
  s: SchemaName,
  subscriptionId: number,
): Promise<number | null> {
  const rows = await exec.query<{ ms: string | null }>(
    `SELECT ceil(EXTRACT(EPOCH FROM min(available_at) - now()) * 1000)::bigint::text AS ms
     FROM ${s.quoted}.deliveries
     WHERE subscription_id = $1::int
       AND state = 'pending'`,
    [subscriptionId],
  );
  const ms = rows[0]?.ms;
  return ms === null || ms === undefined ? null : Math.max(0, Number(ms));
}
