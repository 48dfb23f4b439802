import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/*
 * The statements of resetRelay (relay/reset.ts), in one transaction that first holds the delivery-ids lock
 * exclusive (sql/locks.ts): a relay batch in flight commits first, and no other starts until the reset is done.
 */

/** Locks relay_state for the reset (after the delivery-ids lock, in the order a relay batch takes them). */
export async function lockRelayState(exec: Executor, s: SchemaName): Promise<void> {
  await exec.query(`SELECT 1 FROM ${s.quoted}.relay_state FOR UPDATE`);
}

/**
 * Messages that a snapshot sees but whose tx_id it does not count as visible carry an xid of another cluster
 * (restored with triggers disabled, so messages_tx_id did not rewrite them): a later window would take them for
 * new. Their tx_id becomes 1 (the bootstrap xid, older than every snapshot): they are settled by this reset.
 * A full scan of messages, once, as part of an operator's command.
 */
export async function settleForeignTxIds(exec: Executor, s: SchemaName): Promise<number> {
  // Looked for first: the UPDATE needs a privilege the runtime role does not have, and is almost never needed.
  const found = await exec.query<{ found: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM ${s.quoted}.messages WHERE NOT pg_visible_in_snapshot(tx_id, pg_current_snapshot())
     ) AS found`,
  );
  if (found[0]?.found !== true) return 0;
  const rows = await exec.query<{ id: string }>(
    `UPDATE ${s.quoted}.messages
     SET tx_id = '1'::xid8
     WHERE NOT pg_visible_in_snapshot(tx_id, pg_current_snapshot())
     RETURNING id`,
  );
  return rows.length;
}

/**
 * One statement, so one snapshot: it fans out every message visible in this statement's snapshot that has no
 * delivery anywhere (live, done, cancelled or dead) and was not cancelled, to each matching subscription that
 * existed when the message was published, and makes the same snapshot the relay's done snapshot, with its highest
 * visible message id, in this cluster (an open window is closed). A message with any delivery was relayed (the relay
 * fans a message out to all its subscriptions in one batch), so nothing handled is delivered again; a message that
 * commits after this snapshot falls in the relay's next window. The version bump makes a relay that read the old
 * state roll back its batch. Anti-joins over the whole history: an operator's command, not a hot path. Delivery ids
 * ascend in message id order, as the relay's do. One NOTIFY per subscription that got deliveries.
 */
export async function fanOutUndeliveredAndReset(
  exec: Executor,
  s: SchemaName,
): Promise<{ messages: number; deliveries: number }> {
  const rows = await exec.query<{ messages: string; deliveries: string }>(
    `WITH inserted AS (
       INSERT INTO ${s.quoted}.deliveries (subscription_id, message_id, key, ordered_key, available_at)
       SELECT sub.id, m.id, m.key, CASE WHEN sub.ordered THEN m.key END, coalesce(m.deliver_at, m.created_at)
       FROM ${s.quoted}.messages m
       JOIN ${s.quoted}.subscriptions sub
         ON (m.topic = ANY (sub.topics) OR m.topic ~ sub.topic_pattern)
        AND sub.created_at <= m.created_at
       WHERE NOT EXISTS (SELECT 1 FROM ${s.quoted}.cancellations c WHERE c.message_id = m.id)
         AND NOT EXISTS (SELECT 1 FROM ${s.quoted}.deliveries d WHERE d.message_id = m.id)
         AND NOT EXISTS (SELECT 1 FROM ${s.quoted}.completed_deliveries c WHERE c.message_id = m.id)
         AND NOT EXISTS (SELECT 1 FROM ${s.quoted}.dead_deliveries x WHERE x.message_id = m.id)
       ORDER BY m.id, sub.id
       RETURNING subscription_id, message_id
     ),
     notified AS (
       SELECT pg_notify($1::text, subscription_id::text)
       FROM (SELECT DISTINCT subscription_id FROM inserted) touched
     ),
     written AS (
       UPDATE ${s.quoted}.relay_state
       SET done_snapshot = pg_current_snapshot(),
           done_max_id = (SELECT coalesce(max(id), 0) FROM ${s.quoted}.messages),
           target_snapshot = NULL,
           target_max_id = NULL,
           window_after_id = 0,
           -- This transaction's xid may predate the snapshot (lockRelayState): no bound, the next window probes all.
           done_xid_bound = NULL,
           done_xid_bound_xmax = NULL,
           position_tx = NULL,
           position_id = NULL,
           system_identifier = (SELECT system_identifier FROM pg_control_system()),
           version = version + 1,
           updated_at = now()
       RETURNING 1
     )
     SELECT (SELECT count(DISTINCT message_id) FROM inserted)::text AS messages,
            (SELECT count(*) FROM inserted)::text AS deliveries,
            (SELECT count(*) FROM notified)::text AS notified,
            (SELECT count(*) FROM written)::text AS written`,
    [s.channel],
  );
  return { messages: Number(rows[0]?.messages ?? 0), deliveries: Number(rows[0]?.deliveries ?? 0) };
}
