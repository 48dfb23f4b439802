import { DiscardError, RetryAfterError } from '../errors.js';
import type { Outcome } from '../sql/deliveries.js';

export interface RetryPolicy {
  maxAttempts: number;
  minDelayMs: number;
  maxDelayMs: number;
}

const MAX_ERROR_LENGTH = 4000;

/**
 * The longest delay a RetryAfterError gets: 30 days, the largest retry.maxDelayMs the options accept. Not the
 * policy's maxDelayMs: a handler that asks for a longer wait than the backoff's ceiling (a rate limit that resets
 * tomorrow) means it. The bound keeps `now() + delay` within what bigint and interval arithmetic take.
 */
export const MAX_RETRY_AFTER_MS = 30 * 86_400_000;

/** A value that names nothing printable: String() threw, or the stack and message getters did. */
function placeholder(value: unknown): string {
  return `non-printable thrown value (${typeof value})`;
}

/** `value instanceof type`, false when a Proxy's getPrototypeOf trap throws. */
function isInstance(value: unknown, type: abstract new (...args: never[]) => unknown): boolean {
  try {
    return value instanceof type;
  } catch {
    return false;
  }
}

/** The first of stack, "name: message" and String(error) that is a string and whose getters do not throw. */
function textOf(error: unknown): string {
  const readers: (() => unknown)[] = isInstance(error, Error)
    ? [() => (error as Error).stack, () => `${(error as Error).name}: ${(error as Error).message}`]
    : [];
  readers.push(() => String(error));
  for (const read of readers) {
    try {
      const text = read();
      if (typeof text === 'string') return text;
    } catch {
      // A throwing getter or toString: try the next reader.
    }
  }
  return placeholder(error);
}

/**
 * The text stored as last_error: name, message and the top of the stack, bounded to MAX_ERROR_LENGTH characters
 * (cut before a surrogate pair, not inside it). Never throws, whatever was thrown. Postgres text cannot hold NUL,
 * and one NUL would make the statement that records the outcome fail: NUL becomes U+FFFD.
 */
export function errorText(error: unknown): string {
  let text = textOf(error);
  if (text.length > MAX_ERROR_LENGTH) {
    const last = text.charCodeAt(MAX_ERROR_LENGTH - 1);
    const cut = last >= 0xd800 && last <= 0xdbff ? MAX_ERROR_LENGTH - 1 : MAX_ERROR_LENGTH;
    text = `${text.slice(0, cut)}…`;
  }
  return text.replaceAll('\u0000', '\uFFFD');
}

/**
 * Exponential backoff with jitter: the ceiling doubles each attempt from minDelayMs up to maxDelayMs, and the
 * delay is drawn from its upper half, so retries of a burst spread out but never come back almost at once.
 */
export function backoffMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.minDelayMs * 2 ** Math.min(attempt - 1, 40));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * The delay a RetryAfterError asked for, as whole milliseconds the settle statement can store (a fraction, NaN or
 * 1e20 would make it fail, and with it every outcome of its batch). Not a finite number (NaN, Infinity, not a
 * number at all): the request means nothing, so the attempt's backoff. Negative: a time already past, so 0.
 * Longer than MAX_RETRY_AFTER_MS: that.
 */
function requestedDelayMs(requested: unknown, attempt: number, policy: RetryPolicy): number {
  if (typeof requested !== 'number' || !Number.isFinite(requested)) return backoffMs(attempt, policy);
  return Math.min(MAX_RETRY_AFTER_MS, Math.max(0, Math.round(requested)));
}

/** What to do after a handler threw on the given attempt. */
export function failureOutcome(
  error: unknown,
  attempt: number,
  policy: RetryPolicy,
): { outcome: Exclude<Outcome, 'done'>; delayMs: number } {
  if (isInstance(error, DiscardError) || attempt >= policy.maxAttempts)
    return { outcome: 'dead', delayMs: 0 };
  const delayMs = isInstance(error, RetryAfterError)
    ? requestedDelayMs((error as RetryAfterError).delayMs, attempt, policy)
    : backoffMs(attempt, policy);
  return { outcome: 'retry', delayMs };
}
