import type pg from 'pg';
import { withTransaction, type Executor } from './db/executor.js';
import { lockDeliveryIds } from './sql/locks.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';
import { assertKnownKeys } from './option-checks.js';
import { notifySubscription, requeueDeadLetters, selectDeadLetters } from './sql/dead-letters.js';
import { disableJit } from './sql/session.js';
import { selectRelayBacklog, selectSubscriptionStatus } from './sql/status.js';
import { selectSubscriptionId } from './sql/subscriptions.js';
import { assertSubscriptionName } from './topics.js';
import { replaySince, type ReplaySince } from './replay-since.js';
import type { DeadLetter, OutboxStatus, ReplayOptions, ReplayResult } from './types.js';

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

function replayIds(options: ReplayOptions): string[] | null {
  if (options.ids === undefined) return null;
  if (!Array.isArray(options.ids)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay ids must be an array of delivery ids', {
      value: options.ids,
    });
  }
  const ids = options.ids.map((id) => String(id));
  if (!ids.every(isId)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay ids must be delivery ids (positive integers)', {
      value: options.ids,
    });
  }
  return ids;
}

function replayFrom(name: string, options: ReplayOptions): ReplaySince {
  const { since, after, limit } = options;
  if (!(since instanceof Date) || Number.isNaN(since.getTime())) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay `since` must be a valid Date', { value: since });
  }
  if (options.ids !== undefined) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay takes either `ids` or `since`, not both');
  }
  // `after` (an earlier call's `next`) is checked by replaySince, which reads it.
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay `limit` must be a positive integer', {
      value: limit,
    });
  }
  return { subscription: name, since, after, limit: limit ?? Infinity };
}

/** replay(): dead letters by id or all of them, or, with `since`, the subscription's messages from a time on. */
export async function replay(
  pool: pg.Pool,
  s: SchemaName,
  name: string,
  options: ReplayOptions = {},
): Promise<ReplayResult> {
  assertKnownKeys('replay', options, ['ids', 'since', 'after', 'limit']);
  assertSubscriptionName(name);
  if (options.since !== undefined) return replaySince(pool, s, replayFrom(name, options));
  if (options.after !== undefined || options.limit !== undefined) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'replay `after` and `limit` go with `since`');
  }
  const ids = replayIds(options);
  return withTransaction(pool, async (exec) => {
    const subscriptionId = await subscriptionIdOf(exec, s, name);
    // Dead letters queued anew take ids from the sequence the relay draws from: see lockDeliveryIds.
    await lockDeliveryIds(exec, s);
    const replayed = await requeueDeadLetters(exec, s, { subscriptionId, ids });
    if (replayed > 0) await notifySubscription(exec, s, subscriptionId);
    return { replayed };
  });
}

/**
 * status(): the audit_subscriptions and audit_relay views, in one transaction with JIT off. Over a long history the
 * planner's estimates for the views (the relay's position is a row it cannot see into) pass jit_above_cost, and
 * compiling took 0.5 s for a query that runs in milliseconds.
 */
export async function readStatus(pool: pg.Pool, s: SchemaName): Promise<OutboxStatus> {
  const [subscriptions, relay] = await withTransaction(pool, async (exec) => {
    await disableJit(exec);
    return [await selectSubscriptionStatus(exec, s), await selectRelayBacklog(exec, s)] as const;
  });
  return {
    subscriptions: subscriptions.map((r) => ({
      name: r.subscription,
      topics: r.topics,
      pending: Number(r.pending),
      delayed: Number(r.delayed),
      inFlight: Number(r.in_flight),
      dead: Number(r.dead),
      doneLastHour: Number(r.done_last_hour),
      failedLastHour: Number(r.failed_last_hour),
      oldestPendingMs: Math.max(0, Number(r.oldest_pending_ms)),
      ordered: r.ordered,
      blockKeyOnDead: r.block_key_on_dead,
      rateLimit: r.rate_limit === null ? null : { perSecond: r.rate_limit, burst: r.rate_burst ?? 1 },
      keyConcurrency: r.key_concurrency,
    })),
    relay,
  };
}
