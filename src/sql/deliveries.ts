import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/** A claimed delivery joined with its message. */
export interface ClaimedRow {
  delivery_id: string;
  message_id: string;
  state: 'pending' | 'dead' | 'cancelled';
  attempt: number;
  last_error: string | null;
  topic: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  created_at: Date;
  deliver_at: Date | null;
}

/*
 * BY_ID: statements that look deliveries up by id write the pending check as `state NOT IN ('dead', 'cancelled')`
 * (the same rows: the CHECK constraint allows only these three states) and add `id = ANY (ids)`. With
 * `state = 'pending'` the partial deliveries_due_idx qualifies too, and when the table's statistics are stale (it
 * was analyzed while nearly empty, the usual state of a work table) the planner probes that index with id, its
 * third column, once per row: a full index scan per row, 330 ms for a 1,000-row ack over 50,000 pending rows
 * instead of 2 ms by primary key. Measured in the benchmark's end-to-end drain, where acks fell to 6,000 msg/s.
 */

const LEASE_EXPIRED_ERROR = 'lease expired before an ack: the consumer crashed, stalled or timed out';
const MESSAGE_MISSING_ERROR = 'the message no longer exists in the messages table';

/**
 * Claims up to `limit` due deliveries of one subscription and leases them for `leaseMs`.
 *
 * Index: deliveries_due_idx (subscription_id, available_at, id) WHERE state = 'pending', read in order and cut
 * at LIMIT, so the cost does not grow with rows that are not due (delayed, retrying, leased).
 * Lock: FOR UPDATE SKIP LOCKED on the chosen rows. Competing consumers take disjoint rows without waiting; a row
 * another claimer holds is skipped, never handed out twice, and its lease change commits before it is visible.
 * Lease: available_at moves to the lease end, so a leased row leaves the due range until the lease expires and
 * is then claimed again. attempt + 1 is the fencing token every ack must present.
 * A row whose previous lease expired at maxAttempts is dead-lettered here instead of handed out, so a handler
 * that crashes its process every time still ends; a row whose message was cancelled is marked cancelled, and
 * one whose message was deleted from messages is dead-lettered rather than left blocking the head of the queue.
 * Ordered subscriptions: a row is claimable only while no earlier delivery of its key is unfinished, checked per
 * candidate through deliveries_ordered_key_idx. That earlier row stays 'pending' while leased or retrying, and a
 * claimer that holds it locked has not changed its state, so a concurrent claim still sees it and skips the
 * successor: two deliveries of one key are never leased at once, and a key's rows are leased in relay order.
 */
export async function claimDeliveries(
  exec: Executor,
  s: SchemaName,
  p: { subscriptionId: number; limit: number; leaseMs: number; maxAttempts: number; blockKeyOnDead: boolean },
): Promise<ClaimedRow[]> {
  return exec.query<ClaimedRow>(
    `WITH due AS (
       SELECT q.id
       FROM ${s.quoted}.deliveries q
       WHERE q.subscription_id = $1::int
         AND q.state = 'pending'
         AND q.available_at <= now()
         -- Ordered subscriptions: only the head of each key, i.e. no earlier delivery of the key is unfinished
         -- (pending, which includes leased and retrying, or dead when the key blocks on dead letters).
         AND (q.ordered_key IS NULL OR NOT EXISTS (
           SELECT 1
           FROM ${s.quoted}.deliveries e
           WHERE e.subscription_id = q.subscription_id
             AND e.ordered_key = q.ordered_key
             AND e.id < q.id
             AND (e.state = 'pending' OR (e.state = 'dead' AND $7::boolean))
         ))
       ORDER BY q.available_at, q.id
       LIMIT $2::int
       FOR UPDATE SKIP LOCKED
     ),
     claimed AS (
       -- The outcome of each row is decided in a correlated sub-select (primary-key probes of cancellations and
       -- messages; OFFSET 0 keeps each probe from being copied into every column), so the UPDATE joins nothing:
       -- it reaches its rows by primary key through the claimed ids (an array whose length the planner cannot
       -- see, so it never prefers a scan of the whole table, which a join here got once the table held ~50,000
       -- rows, nor a per-row rescan of the id list, which it got with stale statistics).
       UPDATE ${s.quoted}.deliveries d
       SET (state, attempt, available_at, leased_until, last_error, completed_at) = (
         SELECT v.next_state,
                CASE WHEN v.next_state = 'pending' THEN d.attempt + 1 ELSE d.attempt END,
                CASE WHEN v.next_state = 'pending'
                     THEN now() + $3::int * interval '1 millisecond' ELSE d.available_at END,
                CASE WHEN v.next_state = 'pending' THEN now() + $3::int * interval '1 millisecond' END,
                CASE WHEN v.next_state = 'cancelled' THEN d.last_error
                     WHEN NOT v.has_message THEN $6::text
                     WHEN d.leased_until IS NOT NULL THEN $5::text
                     ELSE d.last_error
                END,
                CASE WHEN v.next_state = 'pending' THEN NULL ELSE now() END
         FROM (
           SELECT CASE
                    WHEN x.cancelled THEN 'cancelled'
                    WHEN d.attempt >= $4::int OR NOT x.has_message THEN 'dead'
                    ELSE 'pending'
                  END AS next_state,
                  x.has_message
           FROM (
             SELECT EXISTS (SELECT 1 FROM ${s.quoted}.cancellations c WHERE c.message_id = d.message_id) AS cancelled,
                    EXISTS (SELECT 1 FROM ${s.quoted}.messages m WHERE m.id = d.message_id) AS has_message
             OFFSET 0
           ) x
           OFFSET 0
         ) v
       )
       WHERE d.id = ANY (ARRAY(SELECT id FROM due))
       RETURNING d.id, d.message_id, d.state, d.attempt, d.last_error
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
      p.blockKeyOnDead,
    ],
  );
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

export type Outcome = 'done' | 'retry' | 'dead';

export interface Settlement {
  deliveryId: string;
  attempt: number;
  outcome: Outcome;
  /** Backoff before the next attempt (retry only). */
  delayMs: number;
  error: string | null;
}

/**
 * Records handler outcomes in one statement. An ack moves the row from deliveries to the append-only
 * completed_deliveries (a DELETE and an INSERT: no new index entries in the hot table, which keeps only unfinished
 * work); a failure schedules the retry at now() + delay, or dead-letters the row.
 * Fencing: only rows still on the attempt this consumer claimed change. A delivery whose lease expired and that
 * another consumer claimed again has a higher attempt, so a late ack or failure from the first consumer is a
 * no-op. The row lock each DELETE/UPDATE takes waits for a concurrent claim of the same row to commit and then
 * re-checks the attempt. Returns the ids that were settled.
 */
export async function settleDeliveries(
  exec: Executor,
  s: SchemaName,
  items: Settlement[],
): Promise<Set<string>> {
  const rows = await exec.query<{ id: string }>(
    `WITH f AS (
       SELECT *
       FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::text[])
         AS f(id, attempt, outcome, delay_ms, error)
     ),
     acked AS (
       DELETE FROM ${s.quoted}.deliveries d
       USING f
       WHERE d.id = ANY ($1::bigint[])
         AND d.id = f.id
         AND d.attempt = f.attempt
         AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
         AND f.outcome = 'done'
       RETURNING d.id, d.subscription_id, d.message_id, d.key, d.attempt, d.last_error, d.created_at
     ),
     logged AS (
       INSERT INTO ${s.quoted}.completed_deliveries (id, subscription_id, message_id, key, attempt, last_error, created_at)
       SELECT id, subscription_id, message_id, key, attempt, last_error, created_at
       FROM acked
     ),
     failed AS (
       UPDATE ${s.quoted}.deliveries d
       SET state = CASE f.outcome WHEN 'dead' THEN 'dead' ELSE 'pending' END,
           available_at = CASE WHEN f.outcome = 'retry'
                               THEN now() + f.delay_ms * interval '1 millisecond' ELSE d.available_at END,
           leased_until = NULL,
           last_error = f.error,
           completed_at = CASE WHEN f.outcome = 'dead' THEN now() END
       FROM f
       WHERE d.id = ANY ($1::bigint[])
         AND d.id = f.id
         AND d.attempt = f.attempt
         AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
         AND f.outcome <> 'done'
       RETURNING d.id
     )
     SELECT id FROM acked
     UNION ALL
     SELECT id FROM failed`,
    [
      items.map((i) => i.deliveryId),
      items.map((i) => i.attempt),
      items.map((i) => i.outcome),
      items.map((i) => i.delayMs),
      items.map((i) => i.error),
    ],
  );
  return new Set(rows.map((r) => r.id));
}

/**
 * Gives back claimed deliveries that were never started (graceful stop): due at once, and the hand-out does not
 * count as an attempt. Fenced by attempt like an ack.
 */
export async function releaseDeliveries(
  exec: Executor,
  s: SchemaName,
  items: { deliveryId: string; attempt: number }[],
): Promise<number> {
  const rows = await exec.query<{ id: string }>(
    `UPDATE ${s.quoted}.deliveries d
     SET attempt = d.attempt - 1,
         available_at = now(),
         leased_until = NULL
     FROM unnest($1::bigint[], $2::int[]) AS f(id, attempt)
     WHERE d.id = ANY ($1::bigint[])
       AND d.id = f.id
       AND d.attempt = f.attempt
       AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
     RETURNING d.id`,
    [items.map((i) => i.deliveryId), items.map((i) => i.attempt)],
  );
  return rows.length;
}

/**
 * Transactional mode: locks the lane's deliveries inside the handler transaction, keeping only those still on
 * our attempt. Plain FOR UPDATE (no SKIP LOCKED): these rows are ours under a live lease, so the only holder can
 * be a consumer that re-claimed one after our lease expired; we wait for it, see its higher attempt and drop the
 * row. Holding the locks until COMMIT keeps any re-claim (which uses SKIP LOCKED) away from rows we are handling.
 */
export async function lockClaimedDeliveries(
  exec: Executor,
  s: SchemaName,
  items: { deliveryId: string; attempt: number }[],
): Promise<Set<string>> {
  const rows = await exec.query<{ id: string }>(
    `SELECT d.id
     FROM ${s.quoted}.deliveries d
     JOIN unnest($1::bigint[], $2::int[]) AS f(id, attempt)
       ON d.id = f.id AND d.attempt = f.attempt
     WHERE d.id = ANY ($1::bigint[])
       AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
     ORDER BY d.id
     FOR UPDATE OF d`,
    [items.map((i) => i.deliveryId), items.map((i) => i.attempt)],
  );
  return new Set(rows.map((r) => r.id));
}

/** Marks a message's pending deliveries cancelled, except those a consumer holds under a live lease. */
export async function cancelDeliveries(exec: Executor, s: SchemaName, messageId: string): Promise<number> {
  const rows = await exec.query<{ id: string }>(
    `UPDATE ${s.quoted}.deliveries
     SET state = 'cancelled',
         completed_at = now()
     WHERE message_id = $1::bigint
       AND state = 'pending'
       AND (leased_until IS NULL OR leased_until <= now())
     RETURNING id`,
    [messageId],
  );
  return rows.length;
}

/**
 * Extends the leases of deliveries whose handlers are still running (lease mode), so a live consumer keeps what
 * it holds however long its handler takes. Fenced by attempt: a delivery that was claimed again, or settled, is
 * not extended and its id is missing from the result. Lease-mode rows are locked only for the instant of a claim
 * or an ack, so this UPDATE does not wait behind a handler.
 */
export async function extendLeases(
  exec: Executor,
  s: SchemaName,
  items: { deliveryId: string; attempt: number }[],
  leaseMs: number,
): Promise<Set<string>> {
  const rows = await exec.query<{ id: string }>(
    `UPDATE ${s.quoted}.deliveries d
     SET available_at = now() + $3::int * interval '1 millisecond',
         leased_until = now() + $3::int * interval '1 millisecond'
     FROM unnest($1::bigint[], $2::int[]) AS f(id, attempt)
     WHERE d.id = ANY ($1::bigint[])
       AND d.id = f.id
       AND d.attempt = f.attempt
       AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
     RETURNING d.id`,
    [items.map((i) => i.deliveryId), items.map((i) => i.attempt), leaseMs],
  );
  return new Set(rows.map((r) => r.id));
}
