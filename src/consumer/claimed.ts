import type { ClaimedRow } from '../sql/claim.js';
import type { Settlement } from '../sql/deliveries.js';
import type { OutboxMessage } from '../types.js';
import { errorText, failureOutcome, type RetryPolicy } from './retry-policy.js';

/** Share of the lease after which deliveries still waiting in the local queue are given back. */
const GIVE_BACK_AT = 0.9;

/**
 * The lease of one claim statement: every delivery it returned shares the same end, and one timer per batch, not
 * per delivery, watches it. The end is estimated from the Node clock at the moment the claim was sent, which is
 * no later than the database's now() inside the claim, so the estimate errs early. Shortly before the end,
 * `onExpiring` gives back what was never started, so another consumer can take it without the hand-out counting
 * as an attempt. What a running handler may do past the end is not decided here: lease mode extends the lease
 * (LeaseKeeper), and a transactional handler's row lock keeps the delivery its own until COMMIT.
 */
export class Lease {
  readonly expiresAt: number;
  private remaining: number;
  private readonly timer: NodeJS.Timeout;

  constructor(count: number, leaseMs: number, sentAt: number, onExpiring: (lease: Lease) => void) {
    this.remaining = count;
    this.expiresAt = sentAt + leaseMs;
    const left = Math.max(0, this.expiresAt - Date.now());
    this.timer = setTimeout(() => onExpiring(this), Math.max(0, left - leaseMs * (1 - GIVE_BACK_AT)));
    this.timer.unref();
  }

  /** Called once per delivery of the batch when this consumer is done with it. */
  finish(): void {
    this.remaining -= 1;
    if (this.remaining <= 0) clearTimeout(this.timer);
  }
}

/** A delivery this consumer holds between claim and settlement. */
export interface Claimed {
  message: OutboxMessage;
  attempt: number;
  lease: Lease;
}

export function toClaimed(subscription: string, row: ClaimedRow, lease: Lease): Claimed {
  return {
    attempt: row.attempt,
    lease,
    message: {
      id: row.message_id,
      deliveryId: row.delivery_id,
      subscription,
      topic: row.topic ?? '', // a pending row's message exists: the claim dead-letters one whose message is gone
      key: row.key,
      payload: row.payload,
      headers: row.headers,
      attempt: row.attempt,
      createdAt: row.created_at,
      deliverAt: row.deliver_at,
    },
  };
}

export function doneSettlement(c: Claimed): HandledOutcome {
  const { deliveryId, topic } = c.message;
  return { deliveryId, topic, attempt: c.attempt, outcome: 'done', delayMs: 0, error: null };
}

/**
 * Never throws, whatever the handler threw (errorText and failureOutcome are total), and carries only values the
 * settle statement can store: a throw here would leave the delivery unsettled until its lease ran out.
 */
export function failedSettlement(c: Claimed, error: unknown, policy: RetryPolicy): HandledOutcome {
  const { outcome, delayMs } = failureOutcome(error, c.attempt, policy);
  const { deliveryId, topic } = c.message;
  return { deliveryId, topic, attempt: c.attempt, outcome, delayMs, error: errorText(error) };
}

/** A handler's outcome to record, and the topic it is counted under once recorded. */
export interface HandledOutcome extends Settlement {
  topic: string;
}

/** The (delivery, attempt) pair that fences every write about a claimed delivery. */
export function fenceOf(c: Claimed): { deliveryId: string; attempt: number } {
  return { deliveryId: c.message.deliveryId, attempt: c.attempt };
}
