import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

export interface MessageBatch {
  /** Messages looked at (up to the limit), and the highest id among them: where the next batch starts. */
  scanned: number;
  lastId: string | null;
  /** A message looked at, above `settledAfter`, is younger than the retention: the batches have reached the present. */
  reachedRecent: boolean;
  /**
   * The id just before the first message looked at, above `settledAfter`, that is younger than the retention or not
   * yet fanned out (null: none): a later pass must look at it again, so the frontier of the passes stops there.
   */
  unsettledAfter: string | null;
  /** The id just before the lowest message looked at and left in place, for whatever reason (null: none left). */
  remainingAfter: string | null;
  messages: number;
  finishedDeliveries: number;
  failures: number;
}

export interface MessageBatchParams {
  /** The batch looks at the `limit` messages after this id. */
  afterId: string;
  limit: number;
  retentionMs: number;
  /** Messages at or below this id were settled when a pass got past them: see SCANNED. */
  settledAfter: string;
}

interface BatchRow {
  scanned: string;
  last_id: string | null;
  reached_recent: boolean | null;
  unsettled_after: string | null;
  remaining_after: string | null;
  messages: string;
  finished: string;
  failures: string;
}

/*
 * EXPIRED: the messages among the next `limit` after $1 (in id order, through the primary key) that retention may
 * remove: settled, that is published more than $3 ms ago and fanned out by the relay (visible in its done snapshot:
 * a message still in the relay's backlog has no deliveries yet, and must keep them coming), and with no delivery
 * that is unfinished: none pending, delayed or in flight in deliveries (deliveries_message_idx) and none dead
 * (dead_deliveries_message_idx). Their finished deliveries are all in completed_deliveries. Every delivery moves
 * between those tables in one statement (ack, dead letter, replay, cancel), so the statement's snapshot sees each
 * in exactly one of them. A message that is not settled yet is one a later pass must look at again (SCANNED).
 */
const EXPIRED = (s: SchemaName) => `
  scanned AS MATERIALIZED (
    SELECT m.id,
           m.created_at >= now() - $3::bigint * interval '1 millisecond' AS recent,
           m.created_at < now() - $3::bigint * interval '1 millisecond'
             AND m.id <= r.done_max_id
             AND pg_visible_in_snapshot(m.tx_id, r.done_snapshot) AS settled
    FROM ${s.quoted}.messages m
    LEFT JOIN (SELECT * FROM ${s.quoted}.relay_state LIMIT 1) r ON true -- one row; see audit_messages
    WHERE m.id > $1::bigint
    ORDER BY m.id
    LIMIT $2::int
  ),
  expired AS (
    SELECT sc.id
    FROM scanned sc
    WHERE sc.settled
      AND NOT EXISTS (SELECT 1 FROM ${s.quoted}.deliveries d WHERE d.message_id = sc.id)
      AND NOT EXISTS (
        SELECT 1
        FROM ${s.quoted}.dead_deliveries x
        WHERE x.message_id = sc.id
          -- A dry run counts dead letters older than $4 ms as gone (the real pass deletes them first); 0: none.
          AND ($4::bigint <= 0 OR x.dead_at >= now() - $4::bigint * interval '1 millisecond')
      )
  )`;

/*
 * What the batch tells the next ones. Messages at or below $5 (the frontier, below which a sweep re-reads) neither
 * end the pass nor hold the frontier back: a pass got past them before, and sweeps come back for what is left there.
 * `removed` names the CTE of the ids the statement removes (or counts as removed); a message another purger holds
 * locked counts as left in place.
 */
const SCANNED = (removed: string) => `
  (SELECT count(*) FROM scanned)::text AS scanned,
  (SELECT max(id) FROM scanned)::text AS last_id,
  (SELECT bool_or(recent) FROM scanned WHERE id > $5::bigint) AS reached_recent,
  (SELECT min(id) - 1 FROM scanned WHERE id > $5::bigint AND settled IS NOT TRUE)::text AS unsettled_after,
  (SELECT min(sc.id) - 1 FROM scanned sc WHERE NOT EXISTS (SELECT 1 FROM ${removed} x WHERE x.id = sc.id))::text
    AS remaining_after`;

function toBatch(row: BatchRow | undefined): MessageBatch {
  return {
    scanned: Number(row?.scanned ?? 0),
    lastId: row?.last_id ?? null,
    reachedRecent: row?.reached_recent === true,
    unsettledAfter: row?.unsettled_after ?? null,
    remainingAfter: row?.remaining_after ?? null,
    messages: Number(row?.messages ?? 0),
    finishedDeliveries: Number(row?.finished ?? 0),
    failures: Number(row?.failures ?? 0),
  };
}

/**
 * Deletes the expired messages among the next `limit` after `afterId` (see EXPIRED), with their finished deliveries,
 * their failure history and their cancellation, and records in retention_state the publish time of the newest one
 * removed (replay from an earlier time must fail). Runs inside the caller's transaction, after lockRetention().
 * Lock: FOR UPDATE SKIP LOCKED on the expired message rows, so two processes purging at once take disjoint
 * messages and never wait for each other (nothing else locks or updates a message row). The other tables are
 * reached by message id through their message indexes; the rows deleted there are finished, which nothing changes.
 */
export async function deleteExpiredMessages(
  exec: Executor,
  s: SchemaName,
  p: MessageBatchParams,
): Promise<MessageBatch> {
  const rows = await exec.query<BatchRow>(
    `WITH ${EXPIRED(s)},
     locked AS MATERIALIZED (
       SELECT m.id
       FROM ${s.quoted}.messages m
       WHERE m.id = ANY (ARRAY(SELECT id FROM expired))
       FOR UPDATE SKIP LOCKED
     ),
     deleted AS (
       DELETE FROM ${s.quoted}.messages m
       WHERE m.id = ANY (ARRAY(SELECT id FROM locked))
       RETURNING m.created_at
     ),
     finished AS (
       DELETE FROM ${s.quoted}.completed_deliveries c
       WHERE c.message_id = ANY (ARRAY(SELECT id FROM locked))
       RETURNING 1
     ),
     failures AS (
       DELETE FROM ${s.quoted}.delivery_failures f
       WHERE f.message_id = ANY (ARRAY(SELECT id FROM locked))
       RETURNING 1
     ),
     cancellations AS (
       DELETE FROM ${s.quoted}.cancellations cc
       WHERE cc.message_id = ANY (ARRAY(SELECT id FROM locked))
     ),
     noted AS (
       UPDATE ${s.quoted}.retention_state
       SET removed_through = greatest(removed_through, (SELECT max(created_at) FROM deleted)),
           messages_removed = messages_removed + (SELECT count(*) FROM deleted),
           updated_at = now()
       WHERE EXISTS (SELECT 1 FROM deleted)
     )
     SELECT ${SCANNED('locked')},
            (SELECT count(*) FROM deleted)::text AS messages,
            (SELECT count(*) FROM finished)::text AS finished,
            (SELECT count(*) FROM failures)::text AS failures`,
    [p.afterId, p.limit, p.retentionMs, 0, p.settledAfter],
  );
  return toBatch(rows[0]);
}

/**
 * What deleteExpiredMessages would delete from the same batch, counted and left in place (a dry run). Dead letters
 * older than deadLetterRetentionMs count as deleted, as the real pass deletes them before the messages.
 */
export async function countExpiredMessages(
  exec: Executor,
  s: SchemaName,
  p: MessageBatchParams & { deadLetterRetentionMs: number },
): Promise<MessageBatch> {
  const rows = await exec.query<BatchRow>(
    `WITH ${EXPIRED(s)}
     SELECT ${SCANNED('expired')},
            (SELECT count(*) FROM expired)::text AS messages,
            (SELECT count(*) FROM ${s.quoted}.completed_deliveries c
              WHERE c.message_id = ANY (ARRAY(SELECT id FROM expired)))::text AS finished,
            (SELECT count(*) FROM ${s.quoted}.delivery_failures f
              WHERE f.message_id = ANY (ARRAY(SELECT id FROM expired)))::text AS failures`,
    [p.afterId, p.limit, p.retentionMs, p.deadLetterRetentionMs, p.settledAfter],
  );
  return toBatch(rows[0]);
}

export interface SweepStart {
  /** The oldest transaction id still running when the sweep started (xid8 as text): all older ones had ended. */
  horizon: string;
  /** A transaction id taken after that (xid8 as text): every transaction that has an id now has a smaller one. */
  xid: string;
  /** The highest message id visible before `xid` was taken, drawn before every id a later transaction draws. */
  maxId: string;
}

/**
 * What a sweep of the messages notes when it starts, for the next sweep to tell whether this one can have missed a
 * message (see the maintenance loop's MessagePosition). pg_current_xact_id() takes one transaction id, once per
 * sweep; it is evaluated after the statement's snapshot was taken, which the horizon and max(id) come from. The
 * max(id) is a backward scan of the primary key: one row.
 */
export async function selectSweepStart(exec: Executor, s: SchemaName): Promise<SweepStart> {
  const rows = await exec.query<SweepStart>(
    `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon,
            pg_current_xact_id()::text AS xid,
            coalesce((SELECT max(id) FROM ${s.quoted}.messages), 0)::text AS "maxId"`,
  );
  const row = rows[0];
  if (row === undefined) throw new Error('selectSweepStart returned no row');
  return row;
}

/** The tables whose rows expire by a timestamp of their own, and that column (constants, never configuration). */
const EXPIRING = { dead_deliveries: 'dead_at', processed: 'recorded_at' } as const;

/**
 * Rows that deleteExpiredDeadDeliveries or deleteExpiredProcessedKeys would delete now (a dry run): dead letters
 * that died, or idempotency keys recorded, more than `retentionMs` ago, counted through the index on that column.
 */
export async function countExpired(
  exec: Executor,
  s: SchemaName,
  table: keyof typeof EXPIRING,
  retentionMs: number,
): Promise<number> {
  const rows = await exec.query<{ n: string }>(
    `SELECT count(*)::text AS n
     FROM ${s.quoted}.${table}
     WHERE ${EXPIRING[table]} < now() - $1::bigint * interval '1 millisecond'`,
    [retentionMs],
  );
  return Number(rows[0]?.n ?? 0);
}

/** The publish time of the newest message retention has removed (null: none yet). */
export async function selectRemovedThrough(exec: Executor, s: SchemaName): Promise<Date | null> {
  const rows = await exec.query<{ removed_through: Date | null }>(
    `SELECT removed_through FROM ${s.quoted}.retention_state`,
  );
  return rows[0]?.removed_through ?? null;
}
