import { DiscardError, RetryAfterError } from '../errors.js';
import type { Outcome } from '../sql/deliveries.js';

export interface RetryPolicy {
  maxAttempts: number;
  minDelayMs: number;
  maxDelayMs: number;
}

const MAX_ERROR_LENGTH = 4000;

/** The text stored as last_error: name, message and the top of the stack, bounded. */
export function errorText(error: unknown): string {
  const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  return text.length > MAX_ERROR_LENGTH ? `${text.slice(0, MAX_ERROR_LENGTH)}…` : text;
}

/**
 * Exponential backoff with jitter: the ceiling doubles each attempt from minDelayMs up to maxDelayMs, and the
 * delay is drawn from its upper half, so retries of a burst spread out but never come back almost at once.
 */
export function backoffMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.minDelayMs * 2 ** Math.min(attempt - 1, 40));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** What to do after a handler threw on the given attempt. */
export function failureOutcome(
  error: unknown,
  attempt: number,
  policy: RetryPolicy,
): { outcome: Exclude<Outcome, 'done'>; delayMs: number } {
  if (error instanceof DiscardError || attempt >= policy.maxAttempts) return { outcome: 'dead', delayMs: 0 };
  const delayMs = error instanceof RetryAfterError ? error.delayMs : backoffMs(attempt, policy);
  return { outcome: 'retry', delayMs };
}
