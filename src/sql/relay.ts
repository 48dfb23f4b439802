import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/** The relay's position: see relay/relay.ts for how the window (done, target] is chosen. */
export interface RelayWindow {
  /** xids of transactions that were running at done_snapshot: their rows may have committed since. */
  doneXip: string[];
  /** done_snapshot's xmax: transactions from here on started after it. */
  doneXmax: string;
  /** The snapshot that bounds this window, as text. */
  target: string;
  positionTx: string;
  positionId: string;
  version: string;
  /** True when a previous batch was full and left this window open in relay_state. */
  windowOpen: boolean;
}

/**
 * Opens a relay batch's transaction (one round trip: a simple-query string).
 * synchronous_commit off: the commit does not wait for its WAL flush. Safe because the relay's writes are
 * derived: the messages were committed durably by their producers, and a crash that loses this commit loses the
 * deliveries and the relay_state advance together, so the batch is relayed again. Anything durable that saw these
 * rows (an ack, a handler transaction) commits later in the WAL, so flushing it flushes this commit too. Saves an
 * fsync per batch on the commit-to-handler path.
 * jit off: once messages has statistics, a full batch's estimated cost passes jit_above_cost, and compiling the
 * statement took 300 ms of a 330 ms batch of 5,000 (27 ms without), on every batch.
 */
export const BEGIN_RELAY_BATCH = 'BEGIN; SET LOCAL synchronous_commit TO off; SET LOCAL jit TO off';

/**
 * Reads the relay position and, when no window is open, takes pg_current_snapshot() as the new upper end.
 * Plain read, no row lock: idle polls write nothing; relayBatch's version check catches a concurrent writer.
 */
export async function readRelayWindow(exec: Executor, s: SchemaName): Promise<RelayWindow> {
  const rows = await exec.query<RelayWindow>(
    `SELECT
       ARRAY(SELECT pg_snapshot_xip(done_snapshot))::text[] AS "doneXip",
       pg_snapshot_xmax(done_snapshot)::text AS "doneXmax",
       coalesce(target_snapshot, pg_current_snapshot())::text AS target,
       coalesce(position_tx, '0'::xid8)::text AS "positionTx",
       coalesce(position_id, 0)::text AS "positionId",
       version::text AS version,
       target_snapshot IS NOT NULL AS "windowOpen"
     FROM ${s.quoted}.relay_state`,
  );
  const row = rows[0];
  if (row === undefined) throw new Error(`${s.quoted}.relay_state has no row; run migrate()`);
  return row;
}

export interface RelayBatchResult {
  messages: number;
  deliveries: number;
  /** False when relay_state changed under us (another relay): the caller rolls back. */
  stateWritten: boolean;
}

/**
 * Fans one batch of committed messages out to the matching subscriptions and advances relay_state, in one
 * statement (run inside a transaction).
 *
 * The batch is the messages whose transaction is visible in the target snapshot but was not in the done
 * snapshot, taken in (tx_id, id) order after the saved position. Two index scans on messages_tx_id_idx find them:
 * equality probes for the xids that were running at done (their rows may have committed since), and a range scan
 * from done's xmax up to target's xmax (transactions that started after done). Rows of transactions committed
 * before done are never scanned again, so a long-running transaction elsewhere costs one probe per batch, and a
 * message whose lower id committed late is still found: the window is defined by commit visibility, not by id.
 * Rolled-back rows are invisible to this statement, so they are never relayed.
 *
 * When the batch is smaller than the limit the window is finished: done := target. Otherwise the position moves
 * to the last message and the same target is kept for the next batch. An empty batch writes nothing, unless
 * it closes a window that a full batch left open (the window held an exact multiple of the limit). The version
 * check makes a second relay that read the same state roll back instead of relaying twice.
 * The INSERT has no ON CONFLICT: only the relay that holds the advisory lock writes, and the version check keeps
 * its batches disjoint, so a conflict never happens in a healthy system, while the speculative insertion that ON
 * CONFLICT asks for cost about 15% of the relay's rate. deliveries_message_idx (unique) still refuses a
 * duplicate: a second writer that somehow read the same state fails with unique_violation and rolls back (the
 * caller treats it like a lost version check).
 * pg_notify runs once per subscription that received rows and is delivered at commit.
 */
export async function relayBatch(
  exec: Executor,
  s: SchemaName,
  w: RelayWindow,
  limit: number,
): Promise<RelayBatchResult> {
  const rows = await exec.query<{ messages: string; deliveries: string; written: string }>(
    `WITH batch AS (
       SELECT id, tx_id, topic, key, deliver_at, created_at
       FROM (
         (SELECT id, tx_id, topic, key, deliver_at, created_at
          FROM ${s.quoted}.messages
          WHERE tx_id = ANY ($1::xid8[])
            AND (tx_id, id) > ($4::xid8, $5::bigint)
            AND pg_visible_in_snapshot(tx_id, $3::pg_snapshot)
          ORDER BY tx_id, id
          LIMIT $6::int)
         UNION ALL
         (SELECT id, tx_id, topic, key, deliver_at, created_at
          FROM ${s.quoted}.messages
          WHERE tx_id >= $2::xid8
            AND tx_id < pg_snapshot_xmax($3::pg_snapshot)
            AND (tx_id, id) > ($4::xid8, $5::bigint)
            AND pg_visible_in_snapshot(tx_id, $3::pg_snapshot)
          ORDER BY tx_id, id
          LIMIT $6::int)
       ) candidates
       ORDER BY tx_id, id
       LIMIT $6::int
     ),
     last AS (
       SELECT tx_id, id FROM batch ORDER BY tx_id DESC, id DESC LIMIT 1
     ),
     inserted AS (
       INSERT INTO ${s.quoted}.deliveries (subscription_id, message_id, key, ordered_key, available_at)
       SELECT sub.id, b.id, b.key, CASE WHEN sub.ordered THEN b.key END, coalesce(b.deliver_at, b.created_at)
       FROM batch b
       JOIN ${s.quoted}.subscriptions sub
         ON b.topic = ANY (sub.topics) OR b.topic ~ sub.topic_pattern
       -- A primary-key probe per message (LATERAL ... LIMIT 1), never a hash of the whole cancellations table.
       LEFT JOIN LATERAL (
         SELECT true AS cancelled
         FROM ${s.quoted}.cancellations c
         WHERE c.message_id = b.id
         LIMIT 1
       ) cancel ON true
       WHERE cancel.cancelled IS NULL
       ORDER BY b.tx_id, b.id, sub.id
       RETURNING subscription_id
     ),
     notified AS (
       SELECT pg_notify($8::text, subscription_id::text)
       FROM (SELECT DISTINCT subscription_id FROM inserted) touched
     ),
     written AS (
       UPDATE ${s.quoted}.relay_state
       SET done_snapshot = CASE WHEN (SELECT count(*) FROM batch) < $6::int THEN $3::pg_snapshot ELSE done_snapshot END,
           target_snapshot = CASE WHEN (SELECT count(*) FROM batch) < $6::int THEN NULL ELSE $3::pg_snapshot END,
           position_tx = CASE WHEN (SELECT count(*) FROM batch) < $6::int THEN NULL ELSE (SELECT tx_id FROM last) END,
           position_id = CASE WHEN (SELECT count(*) FROM batch) < $6::int THEN NULL ELSE (SELECT id FROM last) END,
           version = version + 1,
           updated_at = now()
       WHERE version = $7::bigint
         AND (EXISTS (SELECT 1 FROM batch) OR $9::boolean)
       RETURNING 1
     )
     SELECT
       (SELECT count(*) FROM batch)::text AS messages,
       (SELECT count(*) FROM inserted)::text AS deliveries,
       (SELECT count(*) FROM written)::text AS written,
       (SELECT count(*) FROM notified)::text AS notified`,
    [w.doneXip, w.doneXmax, w.target, w.positionTx, w.positionId, limit, w.version, s.channel, w.windowOpen],
  );
  const row = rows[0];
  const messages = Number(row?.messages ?? 0);
  return {
    messages,
    deliveries: Number(row?.deliveries ?? 0),
    stateWritten: (messages === 0 && !w.windowOpen) || row?.written === '1',
  };
}

/** Committed messages not fanned out yet, and the age of the oldest: the relay's backlog and lag. */
export async function selectRelayBacklog(
  exec: Executor,
  s: SchemaName,
): Promise<{ backlog: number; lagMs: number }> {
  const rows = await exec.query<{ backlog: string; lag_ms: string | null }>(
    `SELECT count(*)::text AS backlog,
            (EXTRACT(EPOCH FROM now() - min(m.created_at)) * 1000)::bigint::text AS lag_ms
     FROM ${s.quoted}.relay_state r
     JOIN ${s.quoted}.messages m
       ON m.tx_id >= pg_snapshot_xmin(r.done_snapshot)
      AND NOT pg_visible_in_snapshot(m.tx_id, r.done_snapshot)`,
  );
  return { backlog: Number(rows[0]?.backlog ?? 0), lagMs: Math.max(0, Number(rows[0]?.lag_ms ?? 0)) };
}
