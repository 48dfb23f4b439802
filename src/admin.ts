import type pg from 'pg';
import { withTransaction, type Executor } from './db/executor.js';
import { lockDeliveryIds } from './sql/locks.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';
import { assertKnownKeys } from './options.js';
import { notifySubscription, requeueDeadLetters, selectDeadLetters } from './sql/dead-letters.js';
import { selectRelayBacklog, selectSubscriptionStatus } from './sql/status.js';
import { selectSubscriptionId } from './sql/subscriptions.js';
import { assertSubscriptionName } from './topics.js';
import type { DeadLetter, OutboxStatus } from './types.js';

/** A bigint id as text: what Postgres's bigint accepts, checked before it gets there. */
export function isId(value: unknown): boolean {
  return typeof value === 'string' && /^[1-9]\d{0,18}$/.test(value) && BigInt(value) <= 9223372036854775807n;
}

async function subscriptionIdOf(exec: Executor, s: SchemaName, name: string): Promise<number> {
  assertSubscriptionName(name);
  const id = await selectSubscriptionId(exec, s, name);
  if (id === null) {
    throw new OutboxError(
      'OUTBOX_UNKNOWN_SUBSCRIPTION',
      `No subscription named "${name}" in schema "${s.name}"`,
      {
        value: name,
      },
    );
  }
  return id;
}

export interface DeadLetterQuery {
  /** At most this many. @defaultValue 100 */
  limit?: number;
  /** Only delivery ids above this one (paging). */
  after?: string;
}

export async function listDeadLetters(
  exec: Executor,
  s: SchemaName,
  name: string,
  query: DeadLetterQuery = {},
): Promise<DeadLetter[]> {
  assertKnownKeys('deadLetters', query, ['limit', 'after']);
  if (query.after !== undefined && !isId(query.after)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', '`after` must be a delivery id (a positive integer)', {
      value: query.after,
    });
  }
  const limit = query.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'limit must be an integer from 1 to 10000', {
      value: limit,
    });
  }
  const subscriptionId = await subscriptionIdOf(exec, s, name);
  const rows = await selectDeadLetters(exec, s, { subscriptionId, limit, afterId: query.after ?? '0' });
  return rows.map((r) => ({
    deliveryId: r.delivery_id,
    messageId: r.message_id,
    topic: r.topic,
    key: r.key,
    payload: r.payload,
    headers: r.headers,
    attempt: r.attempt,
    lastError: r.last_error,
    publishedAt: r.published_at,
    deadAt: r.dead_at,
  }));
}

export async function replayDeadLetters(
  pool: pg.Pool,
  s: SchemaName,
  name: string,
  options: { ids?: readonly (string | number | bigint)[] } = {},
): Promise<{ replayed: number }> {
  assertKnownKeys('replay', options, ['ids']);
  if (options.ids !== undefined && !Array.isArray(options.ids)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay ids must be an array of delivery ids', {
      value: options.ids,
    });
  }
  const ids = options.ids === undefined ? null : options.ids.map((id) => String(id));
  if (ids !== null && !ids.every(isId)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay ids must be delivery ids (positive integers)', {
      value: options.ids,
    });
  }
  assertSubscriptionName(name);
  return withTransaction(pool, async (exec) => {
    const subscriptionId = await subscriptionIdOf(exec, s, name);
    // Dead letters queued anew take ids from the sequence the relay draws from: see lockDeliveryIds.
    await lockDeliveryIds(exec, s);
    const replayed = await requeueDeadLetters(exec, s, { subscriptionId, ids });
    if (replayed > 0) await notifySubscription(exec, s, subscriptionId);
    return { replayed };
  });
}

export async function readStatus(exec: Executor, s: SchemaName): Promise<OutboxStatus> {
  const [subscriptions, relay] = await Promise.all([
    selectSubscriptionStatus(exec, s),
    selectRelayBacklog(exec, s),
  ]);
  return {
    subscriptions: subscriptions.map((r) => ({
      name: r.name,
      topics: r.topics,
      pending: Number(r.pending),
      delayed: Number(r.delayed),
      inFlight: Number(r.in_flight),
      dead: Number(r.dead),
      oldestPendingMs: Math.max(0, Number(r.oldest_pending_ms ?? 0)),
    })),
    relay,
  };
}
