import type { ClaimedRow, Settlement } from '../sql/deliveries.js';
import type { OutboxMessage } from '../types.js';
import { errorText, failureOutcome, type RetryPolicy } from './retry-policy.js';

/** A delivery this consumer holds between claim and settlement. */
export interface Claimed {
  message: OutboxMessage;
  attempt: number;
  /** Aborted at lease end or on a forced stop. */
  abort: AbortController;
  leaseTimer: NodeJS.Timeout;
}

export function toClaimed(subscription: string, row: ClaimedRow, leaseMs: number): Claimed {
  const abort = new AbortController();
  const leaseTimer = setTimeout(() => abort.abort(new Error(`lease of ${leaseMs} ms ran out`)), leaseMs);
  leaseTimer.unref();
  return {
    attempt: row.attempt,
    abort,
    leaseTimer,
    message: {
      id: row.message_id,
      deliveryId: row.delivery_id,
      subscription,
      topic: row.topic,
      key: row.key,
      payload: row.payload,
      headers: row.headers,
      attempt: row.attempt,
      createdAt: row.created_at,
      deliverAt: row.deliver_at,
    },
  };
}

export function doneSettlement(c: Claimed): Settlement {
  return { deliveryId: c.message.deliveryId, attempt: c.attempt, outcome: 'done', delayMs: 0, error: null };
}

export function failedSettlement(c: Claimed, error: unknown, policy: RetryPolicy): Settlement {
  const { outcome, delayMs } = failureOutcome(error, c.attempt, policy);
  return { deliveryId: c.message.deliveryId, attempt: c.attempt, outcome, delayMs, error: errorText(error) };
}

/** The (delivery, attempt) pair that fences every write about a claimed delivery. */
export function fenceOf(c: Claimed): { deliveryId: string; attempt: number } {
  return { deliveryId: c.message.deliveryId, attempt: c.attempt };
}
