import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/*
 * BY_ID: statements that look deliveries up by id write the pending check as `state NOT IN ('dead', 'cancelled')`
 * (the same rows: the CHECK constraint allows only these three states) and add `id = ANY (ids)`. With
 * `state = 'pending'` the partial deliveries_due_idx qualifies too, and when the table's statistics are stale (it
 * was analyzed while nearly empty, the usual state of a work table) the planner probes that index with id, its
 * third column, once per row: a full index scan per row, 330 ms for a 1,000-row ack over 50,000 pending rows
 * instead of 2 ms by primary key. Measured in the benchmark's end-to-end drain, where acks fell to 6,000 msg/s.
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

/**
 * Records handler outcomes in one statement. An ack moves the row from deliveries to the append-only
 * completed_deliveries (a DELETE and an INSERT: no new index entries in the hot table, which keeps only unfinished
 * work); a failure schedules the retry at now() + delay, or dead-letters the row.
 * Fencing: only rows still on the attempt this consumer claimed change. A delivery whose lease expired and that
 * another consumer claimed again has a higher attempt, so a late ack or failure from the first consumer is a
 * no-op. The row lock each DELETE/UPDATE takes waits for a concurrent claim of the same row to commit and then
 * re-checks the attempt. Returns the ids that were settled.
 * A batch of acks only (the usual case) takes a shorter statement: two arrays, no UPDATE branch. Both statements
 * return only the outcomes that were not recorded (usually none), not a row per delivery.
 */
export async function settleDeliveries(
  exec: Executor,
  s: SchemaName,
  items: Settlement[],
): Promise<Set<string>> {
  const ids = items.map((i) => i.deliveryId);
  const attempts = items.map((i) => i.attempt);
  const missed = items.every((i) => i.outcome === 'done')
    ? await exec.query<{ id: string }>(
        `WITH acked AS (${ackStatement(s, 'unnest($1::bigint[], $2::int[]) AS f(id, attempt)', 'true')}),
         logged AS (${logAcked(s)})
         SELECT f.id FROM unnest($1::bigint[], $2::int[]) AS f(id, attempt)
         WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.id = f.id AND a.attempt = f.attempt)`,
        [ids, attempts],
      )
    : await exec.query<{ id: string }>(
        `WITH f AS (
           SELECT *
           FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::text[])
             AS f(id, attempt, outcome, delay_ms, error)
         ),
         acked AS (${ackStatement(s, 'f', "f.outcome = 'done'")}),
         logged AS (${logAcked(s)}),
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
           RETURNING d.id, d.attempt
         )
         SELECT f.id FROM f
         WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.id = f.id AND a.attempt = f.attempt)
           AND NOT EXISTS (SELECT 1 FROM failed x WHERE x.id = f.id AND x.attempt = f.attempt)`,
        [ids, attempts, items.map((i) => i.outcome), items.map((i) => i.delayMs), items.map((i) => i.error)],
      );
  const notSettled = new Set(missed.map((r) => r.id));
  return new Set(ids.filter((id) => !notSettled.has(id)));
}

/** The DELETE of acked rows (settleDeliveries), fenced by attempt, reading (id, attempt) pairs from `source`. */
function ackStatement(s: SchemaName, source: string, condition: string): string {
  return `DELETE FROM ${s.quoted}.deliveries d
          USING ${source}
          WHERE d.id = ANY ($1::bigint[])
            AND d.id = f.id
            AND d.attempt = f.attempt
            AND d.state NOT IN ('dead', 'cancelled') -- i.e. pending; see BY_ID
            AND ${condition}
          RETURNING d.id, d.subscription_id, d.message_id, d.key, d.attempt, d.last_error, d.created_at`;
}

/** The audit row of each acked delivery (settleDeliveries). */
function logAcked(s: SchemaName): string {
  return `INSERT INTO ${s.quoted}.completed_deliveries
            (id, subscription_id, message_id, key, attempt, last_error, created_at)
          SELECT id, subscription_id, message_id, key, attempt, last_error, created_at
          FROM acked`;
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
