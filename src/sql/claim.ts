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
