import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { MessageRow } from '../producer/message-input.js';

interface InsertedRow {
  id: string;
  topic: string;
  dedup_key: string | null;
}

/**
 * Only statements that carry a dedupKey name the dedup index as their arbiter: ON CONFLICT turns every row into
 * a speculative insertion (an extra WAL record and index pre-check per row), which cost plain publishes about 18%.
 */
const ON_DEDUP_CONFLICT = 'ON CONFLICT (topic, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING';

/**
 * Inserts one message in the caller's transaction. tx_id defaults to pg_current_xact_id(), the relay's cursor.
 * With a dedupKey, a conflicting (topic, dedup_key) waits for the other writer and then inserts nothing.
 */
export async function insertMessage(exec: Executor, s: SchemaName, row: MessageRow): Promise<string | null> {
  const rows = await exec.query<{ id: string }>(
    `INSERT INTO ${s.quoted}.messages (topic, key, payload, headers, deliver_at, dedup_key)
     VALUES (
       $1::text,
       $2::text,
       $3::jsonb,
       $4::jsonb,
       CASE WHEN $6::bigint IS NULL THEN $5::timestamptz ELSE now() + $6::bigint * interval '1 millisecond' END,
       $7::text
     )
     ${row.dedupKey === null ? '' : ON_DEDUP_CONFLICT}
     RETURNING id`,
    [row.topic, row.key, row.payload, row.headers, row.deliverAt, row.delayMs, row.dedupKey],
  );
  return rows[0]?.id ?? null;
}

/** Inserts many messages in one statement, in input order (ids ascend with it). */
export async function insertMessages(
  exec: Executor,
  s: SchemaName,
  rows: MessageRow[],
): Promise<InsertedRow[]> {
  return exec.query<InsertedRow>(
    `INSERT INTO ${s.quoted}.messages (topic, key, payload, headers, deliver_at, dedup_key)
     SELECT
       u.topic,
       u.key,
       u.payload::jsonb,
       u.headers::jsonb,
       CASE WHEN u.delay_ms IS NULL THEN u.deliver_at ELSE now() + u.delay_ms * interval '1 millisecond' END,
       u.dedup_key
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::text[])
       WITH ORDINALITY AS u(topic, key, payload, headers, deliver_at, delay_ms, dedup_key, ord)
     ORDER BY u.ord
     ${rows.some((r) => r.dedupKey !== null) ? ON_DEDUP_CONFLICT : ''}
     RETURNING id, topic, dedup_key`,
    [
      rows.map((r) => r.topic),
      rows.map((r) => r.key),
      rows.map((r) => r.payload),
      rows.map((r) => r.headers),
      rows.map((r) => r.deliverAt),
      rows.map((r) => r.delayMs),
      rows.map((r) => r.dedupKey),
    ],
  );
}

/** Ids of existing messages by (topic, dedup_key), for publishes that hit the dedup index. */
export async function selectDedupIds(
  exec: Executor,
  s: SchemaName,
  keys: { topic: string; dedupKey: string }[],
): Promise<InsertedRow[]> {
  return exec.query<InsertedRow>(
    `SELECT m.id, m.topic, m.dedup_key
     FROM ${s.quoted}.messages m
     JOIN unnest($1::text[], $2::text[]) AS k(topic, dedup_key)
       ON m.topic = k.topic AND m.dedup_key = k.dedup_key`,
    [keys.map((k) => k.topic), keys.map((k) => k.dedupKey)],
  );
}

/** Records a cancellation: the relay skips the message, and claims drop deliveries already made. */
export async function insertCancellation(exec: Executor, s: SchemaName, messageId: string): Promise<void> {
  await exec.query(
    `INSERT INTO ${s.quoted}.cancellations (message_id)
     VALUES ($1::bigint)
     ON CONFLICT (message_id) DO NOTHING`,
    [messageId],
  );
}
