import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { shareDeliveryIdsLock } from './locks.js';

/** The relay's position: see relay/relay.ts for how the window (done, target] is chosen and walked. */
export interface RelayWindow {
  /** xids of transactions that were running at done_snapshot: their rows may have committed since. */
  doneXip: string[];
  /** done_snapshot as text. */
  done: string;
  /** The highest message id visible in done (see relayBatch for what it bounds). */
  doneMaxId: string;
  /**
   * An xid assigned after done was taken: every message of a transaction whose xid is this or higher has an id
   * above doneMaxId. Null when unknown (after a migration or a reset): then target's xmax serves.
   */
  doneXidBound: string | null;
  /** The snapshot that bounds this window, as text. */
  target: string;
  /** The highest message id visible in target; null for a window opened by an earlier version (no bound). */
  targetMaxId: string | null;
  /** The last id relayed inside this window (0 at its start). */
  afterId: string;
  /** The (tx_id, id) position of a window opened by an earlier version, which walked windows in that order. */
  legacyPosition: { tx: string; id: string } | null;
  version: string;
  /** True when a previous batch was full and left this window open in relay_state. */
  windowOpen: boolean;
  /** Why this position cannot be used on this server (the database moved to another cluster), or null. */
  foreign: ForeignPosition | null;
}

/** A relay position made in another cluster: its snapshots and xids mean nothing here. */
export interface ForeignPosition {
  storedSystemIdentifier: string | null;
  systemIdentifier: string;
  /** The server's next transaction id is below the stored window's: every new message would count as relayed. */
  xidBehind: boolean;
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

interface RelayStateRow {
  doneXip: string[];
  done: string;
  doneMaxId: string;
  doneXidBound: string | null;
  target: string;
  targetMaxId: string | null;
  afterId: string;
  legacyTx: string | null;
  legacyId: string | null;
  version: string;
  windowOpen: boolean;
  storedSystemIdentifier: string | null;
  systemIdentifier: string;
  xidBehind: boolean;
}

/**
 * Reads the relay position and, when no window is open, takes pg_current_snapshot() as the new upper end with the
 * highest message id visible in it (the same statement, so the same snapshot: every message visible in target has
 * an id at most this, and every message of a transaction that starts later gets a higher one).
 * Plain read, no row lock: idle polls write nothing; relayBatch's version check catches a concurrent writer. It
 * takes the delivery-ids lock shared for the batch's transaction (see sql/locks.ts). It also reads which cluster this is: the position is foreign when the stored system identifier differs, or when
 * the server's transaction ids have not reached the stored snapshots (a restore into a younger cluster).
 */
export async function readRelayWindow(exec: Executor, s: SchemaName): Promise<RelayWindow> {
  const rows = await exec.query<RelayStateRow>(
    `SELECT
       ARRAY(SELECT pg_snapshot_xip(done_snapshot))::text[] AS "doneXip",
       done_snapshot::text AS done,
       done_max_id::text AS "doneMaxId",
       -- Only the bound that the closing batch wrote with this done snapshot (an earlier version moves done alone).
       CASE WHEN done_xid_bound_xmax = pg_snapshot_xmax(done_snapshot) THEN done_xid_bound END::text
         AS "doneXidBound",
       coalesce(target_snapshot, pg_current_snapshot())::text AS target,
       CASE WHEN target_snapshot IS NULL
            THEN (SELECT coalesce(max(id), 0) FROM ${s.quoted}.messages)
            -- A window an earlier version opened has no bound of its own (target_max_id may be a stale one).
            WHEN position_tx IS NOT NULL THEN NULL
            ELSE target_max_id
       END::text AS "targetMaxId",
       -- An earlier version closes windows without resetting window_after_id.
       CASE WHEN target_snapshot IS NULL THEN 0 ELSE window_after_id END::text AS "afterId",
       position_tx::text AS "legacyTx",
       position_id::text AS "legacyId",
       version::text AS version,
       target_snapshot IS NOT NULL AS "windowOpen",
       system_identifier::text AS "storedSystemIdentifier",
       (SELECT system_identifier FROM pg_control_system())::text AS "systemIdentifier",
       pg_snapshot_xmax(pg_current_snapshot())
         < pg_snapshot_xmax(coalesce(target_snapshot, done_snapshot)) AS "xidBehind",
       ${shareDeliveryIdsLock('$1')}::text AS "idsLocked"
     FROM ${s.quoted}.relay_state`,
    [s.name],
  );
  const row = rows[0];
  if (row === undefined) throw new Error(`${s.quoted}.relay_state has no row; run migrate()`);
  const moved =
    row.xidBehind ||
    (row.storedSystemIdentifier !== null && row.storedSystemIdentifier !== row.systemIdentifier);
  return {
    doneXip: row.doneXip,
    done: row.done,
    doneMaxId: row.doneMaxId,
    doneXidBound: row.doneXidBound,
    target: row.target,
    targetMaxId: row.targetMaxId,
    afterId: row.afterId,
    legacyPosition:
      row.legacyTx === null || row.legacyId === null ? null : { tx: row.legacyTx, id: row.legacyId },
    version: row.version,
    windowOpen: row.windowOpen,
    foreign: moved
      ? {
          storedSystemIdentifier: row.storedSystemIdentifier,
          systemIdentifier: row.systemIdentifier,
          xidBehind: row.xidBehind,
        }
      : null,
  };
}

export interface RelayBatchResult {
  messages: number;
  deliveries: number;
  /** The batch's messages per topic (for metrics). */
  byTopic: Record<string, number>;
  /** False when relay_state changed under us (another relay): the caller rolls back. */
  stateWritten: boolean;
}

/**
 * Fans one batch of committed messages out to the matching subscriptions and advances relay_state, in one
 * statement (run inside a transaction).
 *
 * The window is the messages whose transaction is visible in the target snapshot but was not in the done snapshot,
 * and it is walked in id order: the batch is its `limit` lowest ids above the last one relayed (afterId). Id order,
 * not commit or xid order, because it is causal: a message that committed before another was inserted got the
 * lower id, so per-key order holds for ordered subscriptions however the window is cut into batches (and across
 * windows: a message that committed before another was inserted is visible in every snapshot that shows the
 * other). Three bounded scans find the batch, each at most `limit` rows, split by id at done_max_id (the highest id
 * visible in done):
 * - above done_max_id up to target's highest id: an ordered range of the primary key, filtered by visibility. Each
 *   batch starts at afterId, so it costs the same however large the backlog.
 * - at or below it, the rows of transactions that were running at done. A snapshot lists those below its xmax
 *   (xip: per xid, an ordered range of messages_tx_id_idx); those at or above xmax (xmax is the latest completed
 *   xid + 1, so transactions that began after the last commit are not listed) lie between done's xmax and
 *   done_xid_bound, an xid the relay took after done (one range of messages_tx_id_idx). A message whose xid is
 *   assigned after done has an id above done_max_id, because the messages_xid_first trigger takes the xid before
 *   the id is drawn; so nothing else can hide below done_max_id. Unknown bound: up to target's xmax (the whole
 *   window's xids: slower, once).
 * Nothing below done_max_id is read again otherwise, so a long-running transaction elsewhere costs one probe per
 * batch. Rows of transactions running at target, or rolled back, fail the visibility filter: never relayed here.
 *
 * When the batch is smaller than the limit the window is finished: done := target. Otherwise afterId moves to the
 * batch's last id and the same target is kept for the next batch. An empty batch writes nothing, unless it closes
 * a window that a full batch left open. The version check makes a second relay that read the same state roll
 * back instead of relaying twice.
 * The INSERT has no ON CONFLICT: only the relay that holds the advisory lock writes, and the version check keeps
 * its batches disjoint, so a conflict never happens in a healthy system, while the speculative insertion that ON
 * CONFLICT asks for cost about 15% of the relay's rate. deliveries_message_idx (unique) still refuses a
 * duplicate: a second writer that somehow read the same state fails with unique_violation and rolls back (the
 * caller treats it like a lost version check). Delivery ids are drawn in message id order, which the claim's
 * per-key check relies on.
 * pg_notify runs once per subscription that received rows and is delivered at commit.
 */
export async function relayBatch(
  exec: Executor,
  s: SchemaName,
  w: RelayWindow,
  limit: number,
): Promise<RelayBatchResult> {
  // A window that an earlier version left open was walked in (tx_id, id) order: skip what it relayed already.
  const legacy = w.legacyPosition === null ? '' : `AND (m.tx_id, m.id) > ($11::xid8, $12::bigint)`;
  const params: unknown[] = [
    w.doneXip,
    w.done,
    w.target,
    w.afterId,
    w.doneMaxId,
    w.targetMaxId,
    limit,
    w.version,
    s.channel,
    w.doneXidBound,
  ];
  if (w.legacyPosition !== null) params.push(w.legacyPosition.tx, w.legacyPosition.id);
  params.push(w.windowOpen);
  const windowOpen = `$${params.length}::boolean`;
  const rows = await exec.query<{
    messages: string;
    deliveries: string;
    written: string;
    by_topic: Record<string, number> | null;
  }>(
    `WITH batch AS (
       SELECT id, topic, key, deliver_at, created_at
       FROM (
         (SELECT xm.id, xm.topic, xm.key, xm.deliver_at, xm.created_at
          FROM unnest($1::xid8[]) AS x(tx)
          CROSS JOIN LATERAL (
            SELECT m.id, m.tx_id, m.topic, m.key, m.deliver_at, m.created_at
            FROM ${s.quoted}.messages m
            WHERE m.tx_id = x.tx
              AND m.id > $4::bigint
              AND m.id <= $5::bigint
              ${legacy}
            ORDER BY m.id
            LIMIT $7::int
          ) xm
          WHERE pg_visible_in_snapshot(x.tx, $3::pg_snapshot))
         UNION ALL
         (SELECT m.id, m.topic, m.key, m.deliver_at, m.created_at
          FROM ${s.quoted}.messages m
          WHERE m.tx_id >= pg_snapshot_xmax($2::pg_snapshot)
            AND m.tx_id < coalesce($10::xid8, pg_snapshot_xmax($3::pg_snapshot))
            AND m.id > $4::bigint
            AND m.id <= $5::bigint
            AND pg_visible_in_snapshot(m.tx_id, $3::pg_snapshot)
            ${legacy}
          ORDER BY m.id
          LIMIT $7::int)
         UNION ALL
         (SELECT m.id, m.topic, m.key, m.deliver_at, m.created_at
          FROM ${s.quoted}.messages m
          WHERE m.id > greatest($4::bigint, $5::bigint)
            AND m.id <= coalesce($6::bigint, 9223372036854775807)
            AND pg_visible_in_snapshot(m.tx_id, $3::pg_snapshot)
            AND NOT pg_visible_in_snapshot(m.tx_id, $2::pg_snapshot)
            ${legacy}
          ORDER BY m.id
          LIMIT $7::int)
       ) candidates
       ORDER BY id
       LIMIT $7::int
     ),
     closes AS (
       SELECT (SELECT count(*) FROM batch) < $7::int AS window_done,
              (SELECT max(id) FROM batch) AS last_id
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
       ORDER BY b.id, sub.id
       RETURNING subscription_id
     ),
     notified AS (
       SELECT pg_notify($9::text, subscription_id::text)
       FROM (SELECT DISTINCT subscription_id FROM inserted) touched
     ),
     written AS (
       UPDATE ${s.quoted}.relay_state
       SET done_snapshot = CASE WHEN c.window_done THEN $3::pg_snapshot ELSE done_snapshot END,
           done_max_id = CASE WHEN c.window_done THEN coalesce($6::bigint, done_max_id) ELSE done_max_id END,
           -- This transaction's xid is assigned in this statement, after target was taken: a bound for it.
           done_xid_bound = CASE WHEN c.window_done THEN pg_current_xact_id() ELSE done_xid_bound END,
           done_xid_bound_xmax = CASE WHEN c.window_done THEN pg_snapshot_xmax($3::pg_snapshot)
                                      ELSE done_xid_bound_xmax END,
           target_snapshot = CASE WHEN c.window_done THEN NULL ELSE $3::pg_snapshot END,
           target_max_id = CASE WHEN c.window_done THEN NULL ELSE $6::bigint END,
           window_after_id = CASE WHEN c.window_done THEN 0 ELSE c.last_id END,
           position_tx = CASE WHEN c.window_done THEN NULL ELSE position_tx END,
           position_id = CASE WHEN c.window_done THEN NULL ELSE position_id END,
           version = version + 1,
           updated_at = now()
       FROM closes c
       WHERE version = $8::bigint
         AND (c.last_id IS NOT NULL OR ${windowOpen})
       RETURNING 1
     )
     SELECT
       (SELECT count(*) FROM batch)::text AS messages,
       (SELECT count(*) FROM inserted)::text AS deliveries,
       (SELECT count(*) FROM written)::text AS written,
       (SELECT count(*) FROM notified)::text AS notified,
       -- A grouping of the batch's rows (at most the batch size), already in memory.
       (SELECT json_object_agg(topic, n) FROM (SELECT topic, count(*) AS n FROM batch GROUP BY topic) t) AS by_topic`,
    params,
  );
  const row = rows[0];
  const messages = Number(row?.messages ?? 0);
  return {
    messages,
    deliveries: Number(row?.deliveries ?? 0),
    byTopic: row?.by_topic ?? {},
    stateWritten: (messages === 0 && !w.windowOpen) || row?.written === '1',
  };
}
