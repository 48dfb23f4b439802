import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/*
 * BY_ID: statements that look deliveries up by id write the pending check as `state NOT IN ('dead', 'cancelled')`
 * (the same rows: the CHECK constraint allows only these three states) and add `id = ANY (ids)`. With
 * `state = 'pending'` the partial deliveries_due_idx qualifies too, and when the table's statistics are stale (it
 * was analyzed while nearly empty, the usual state of a work table) the planner probes that index with id, its
 * third column, once per row: a full index scan per row, 330 ms for a 1,000-row ack over 50,000 pending rows
 * instead of 2 ms by primary key. Measured in the benchmark's end-to-end drain, where acks fell to 6,000 msg/s.
 * Since dead and cancelled rows move out of deliveries the check holds for every row; it stays in this form so that
 * each statement still says it touches pending work only, without inviting that plan.
 */

export type Outcome = 'done' | 'retry' | 'dead';

export interface Settlement {
  deliveryId: string;
  attempt: number;
  outcome: Outcome;
  /** Backoff before the next attempt (retry only). */
  delayMs: number;
  error: string | null;
}

/** The key of one outcome in settleDeliveries' result: a delivery can be held twice, on two attempts. */
export function settlementKey(item: { deliveryId: string; attempt: number }): string {
  return `${item.deliveryId}:${item.attempt}`;
}

/**
 * Records handler outcomes in one statement. An ack moves the row from deliveries to the append-only
 * completed_deliveries and a dead letter moves it to dead_deliveries under its delivery id (a DELETE and an
 * INSERT: no new index entries in the hot table, which keeps only pending work); a retry stays an UPDATE that
 * schedules the next attempt at now() + delay. Each retry and dead letter also adds its error to
 * delivery_failures; an ack adds nothing there.
 * Fencing: only rows still on the attempt this consumer claimed change. A delivery whose lease expired and that
 * another consumer claimed again has a higher attempt, so a late ack or failure from the first consumer is a
 * no-op. The row lock each DELETE/UPDATE takes waits for a concurrent claim of the same row to commit and then
 * re-checks the attempt. Returns the settlementKey of every outcome that was recorded.
 * Both statements return only the outcomes that were not recorded (usually none), not a row per delivery, and a
 * batch of acks only (the usual case) takes the shorter one: two arrays, no UPDATE branch.
 */
export async function settleDeliveries(
  exec: Executor,
  s: SchemaName,
  items: Settlement[],
): Promise<Set<string>> {
  const missed = items.every((i) => i.outcome === 'done')
    ? await ackOnly(exec, s, items)
    : await settleMixed(exec, s, items);
  const notRecorded = new Set(missed.map((r) => settlementKey({ deliveryId: r.id, attempt: r.attempt })));
  return new Set(items.map(settlementKey).filter((key) => !notRecorded.has(key)));
}

interface Missed {
  id: string;
  attempt: number;
}

/*
 * FINISHED and LOGGED: the DELETE of acked (and, in settleMixed, dead) rows and the audit rows of the acked ones,
 * shared by both settle statements. The statement around them defines f(id, attempt, ...) and passes the ids as
 * $1; `returning` adds columns of f to what the DELETE returns.
 */
const FINISHED = (s: SchemaName, condition: string, returning = '') =>
  `DELETE FROM ${s.quoted}.deliveries d
   USING f
   WHERE d.id = ANY ($1::bigint[])
     AND d.id = f.id
     AND d.attempt = f.attempt
     AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
     AND ${condition}
   RETURNING d.id, d.subscription_id, d.message_id, d.key, d.ordered_key, d.attempt, d.last_error,
             d.created_at, d.first_attempt_at, d.last_attempt_at, d.consumer_id${returning}`;
const LOGGED = (s: SchemaName, condition: string) =>
  `INSERT INTO ${s.quoted}.completed_deliveries
     (id, subscription_id, message_id, key, attempt, last_error, created_at, outcome,
      first_attempt_at, last_attempt_at, consumer_id)
   SELECT id, subscription_id, message_id, key, attempt, last_error, created_at, 'done',
          first_attempt_at, last_attempt_at, consumer_id
   FROM finished
   WHERE ${condition}`;

async function ackOnly(exec: Executor, s: SchemaName, items: Settlement[]): Promise<Missed[]> {
  return exec.query<Missed>(
    `WITH f AS (SELECT * FROM unnest($1::bigint[], $2::int[]) AS f(id, attempt)),
     finished AS (${FINISHED(s, 'true')}),
     logged AS (${LOGGED(s, 'true')})
     SELECT f.id, f.attempt FROM f
     WHERE NOT EXISTS (SELECT 1 FROM finished a WHERE a.id = f.id AND a.attempt = f.attempt)`,
    [items.map((i) => i.deliveryId), items.map((i) => i.attempt)],
  );
}

async function settleMixed(exec: Executor, s: SchemaName, items: Settlement[]): Promise<Missed[]> {
  return exec.query<Missed>(
    `WITH f AS (
       SELECT *
       FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::text[])
         AS f(id, attempt, outcome, delay_ms, error)
     ),
     finished AS (${FINISHED(s, "f.outcome IN ('done', 'dead')", ', f.outcome, f.error')}),
     logged AS (${LOGGED(s, "outcome = 'done'")}),
     dead AS (
       INSERT INTO ${s.quoted}.dead_deliveries
         (id, subscription_id, message_id, key, ordered_key, attempt, last_error, created_at,
          first_attempt_at, last_attempt_at, consumer_id)
       SELECT id, subscription_id, message_id, key, ordered_key, attempt, error, created_at,
              first_attempt_at, last_attempt_at, consumer_id
       FROM finished
       WHERE outcome = 'dead'
     ),
     retried AS (
       UPDATE ${s.quoted}.deliveries d
       SET available_at = now() + f.delay_ms * interval '1 millisecond',
           leased_until = NULL,
           last_error = f.error
       FROM f
       WHERE d.id = ANY ($1::bigint[])
         AND d.id = f.id
         AND d.attempt = f.attempt
         AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
         AND f.outcome = 'retry'
       RETURNING d.id, d.subscription_id, d.message_id, d.attempt, d.consumer_id, f.error
     ),
     -- The failure history: a row per failed attempt (retried or dead), under the consumer that ran it.
     failed AS (
       INSERT INTO ${s.quoted}.delivery_failures
         (message_id, subscription_id, delivery_id, attempt, error, consumer_id)
       SELECT message_id, subscription_id, id, attempt, error, consumer_id FROM retried
       UNION ALL
       SELECT message_id, subscription_id, id, attempt, error, consumer_id FROM finished WHERE outcome = 'dead'
     )
     SELECT f.id, f.attempt FROM f
     WHERE NOT EXISTS (SELECT 1 FROM finished a WHERE a.id = f.id AND a.attempt = f.attempt)
       AND NOT EXISTS (SELECT 1 FROM retried x WHERE x.id = f.id AND x.attempt = f.attempt)`,
    [
      items.map((i) => i.deliveryId),
      items.map((i) => i.attempt),
      items.map((i) => i.outcome),
      items.map((i) => i.delayMs),
      items.map((i) => i.error),
    ],
  );
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
         leased_until = NULL,
         last_attempt_at = CASE WHEN d.attempt > 1 THEN d.last_attempt_at END
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

/**
 * Cancels a message's pending deliveries, except those a consumer holds under a live lease: they move to
 * completed_deliveries with outcome 'cancelled' (a held one is dropped by its next claim, which sees the
 * cancellation). Reached through deliveries_message_idx (message_id, subscription_id). The DELETE's row lock waits
 * for a concurrent claim of the row to commit and then re-checks the lease, so a row just leased stays.
 */
export async function cancelDeliveries(exec: Executor, s: SchemaName, messageId: string): Promise<number> {
  const rows = await exec.query<{ n: string }>(
    `WITH dropped AS (
       DELETE FROM ${s.quoted}.deliveries d
       WHERE d.message_id = $1::bigint
         AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
         AND (d.leased_until IS NULL OR d.leased_until <= now())
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
     )
     SELECT count(*)::text AS n FROM dropped`,
    [messageId],
  );
  return Number(rows[0]?.n ?? 0);
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
