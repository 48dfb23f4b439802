import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { DeliveryStatus } from '../types.js';

export interface JourneyMessageRow {
  message_id: string;
  topic: string;
  key: string | null;
  headers: Record<string, string>;
  payload: unknown;
  published_at: Date;
  deliver_at: Date | null;
  relayed: boolean;
  relayed_at: Date | null;
  cancelled_at: Date | null;
}

export interface JourneyDeliveryRow {
  subscription: string;
  delivery_id: string;
  status: DeliveryStatus;
  attempts: number;
  first_attempt_at: Date | null;
  last_attempt_at: Date | null;
  completed_at: Date | null;
  last_error: string | null;
  consumer: string | null;
  relayed_at: Date;
  due_at: Date | null;
}

export interface JourneyFailureRow {
  subscription: string;
  delivery_id: string;
  attempt: number;
  error: string | null;
  consumer: string | null;
  failed_at: Date;
}

/*
 * A message's journey, read from the audit views (the documented SQL contract) by message id: a primary-key probe of
 * messages, and in each delivery table and delivery_failures a probe of its message index. Three statements on a
 * pool may see three moments; a delivery that moved in between shows in its newer place.
 */

export async function selectJourneyMessage(
  exec: Executor,
  s: SchemaName,
  messageId: string,
): Promise<JourneyMessageRow | null> {
  const rows = await exec.query<JourneyMessageRow>(
    `SELECT message_id::text, topic, key, headers, payload, published_at, deliver_at, relayed, relayed_at,
            cancelled_at
     FROM ${s.quoted}.audit_messages
     WHERE message_id = $1::bigint`,
    [messageId],
  );
  return rows[0] ?? null;
}

export async function selectJourneyDeliveries(
  exec: Executor,
  s: SchemaName,
  messageId: string,
): Promise<JourneyDeliveryRow[]> {
  return exec.query<JourneyDeliveryRow>(
    `SELECT subscription, delivery_id::text, status, attempts, first_attempt_at, last_attempt_at, completed_at,
            last_error, consumer, relayed_at, due_at
     FROM ${s.quoted}.audit_deliveries
     WHERE message_id = $1::bigint
     ORDER BY subscription, delivery_id`,
    [messageId],
  );
}

export async function selectJourneyFailures(
  exec: Executor,
  s: SchemaName,
  messageId: string,
): Promise<JourneyFailureRow[]> {
  return exec.query<JourneyFailureRow>(
    `SELECT subscription, delivery_id::text, attempt, error, consumer, failed_at
     FROM ${s.quoted}.audit_failures
     WHERE message_id = $1::bigint
     ORDER BY failed_at, subscription`,
    [messageId],
  );
}

/** Whether a message with this id exists (visible to the caller's transaction). */
export async function messageExists(exec: Executor, s: SchemaName, messageId: string): Promise<boolean> {
  const rows = await exec.query<{ found: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM ${s.quoted}.messages WHERE id = $1::bigint) AS found`,
    [messageId],
  );
  return rows[0]?.found === true;
}

export interface KeyMatchRow {
  message_id: string;
  topic: string;
  published_at: Date;
}

/**
 * The newest messages with this key among the last `scan` messages: messages has no index on key (it would cost
 * every publish), so the search walks a bounded range of the primary key backwards from the newest id.
 */
export async function selectMessagesByKey(
  exec: Executor,
  s: SchemaName,
  p: { key: string; scan: number; limit: number },
): Promise<KeyMatchRow[]> {
  return exec.query<KeyMatchRow>(
    `SELECT m.id::text AS message_id, m.topic, m.created_at AS published_at
     FROM ${s.quoted}.messages m
     WHERE m.id > (SELECT coalesce(max(id), 0) FROM ${s.quoted}.messages) - $2::bigint
       AND m.key = $1::text
     ORDER BY m.id DESC
     LIMIT $3::int`,
    [p.key, p.scan, p.limit],
  );
}
