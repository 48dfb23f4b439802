/** Every error pg-outbox throws on purpose carries one of these codes. */
export type OutboxErrorCode =
  | 'OUTBOX_INVALID_OPTION'
  | 'OUTBOX_UNKNOWN_OPTION'
  | 'OUTBOX_INVALID_SCHEMA'
  | 'OUTBOX_INVALID_TOPIC'
  | 'OUTBOX_INVALID_KEY'
  | 'OUTBOX_INVALID_SUBSCRIPTION'
  | 'OUTBOX_INVALID_PAYLOAD'
  | 'OUTBOX_INVALID_HEADERS'
  | 'OUTBOX_PAYLOAD_TOO_LARGE'
  | 'OUTBOX_INVALID_EXECUTOR'
  | 'OUTBOX_NOT_IN_TRANSACTION'
  | 'OUTBOX_UNKNOWN_SUBSCRIPTION'
  | 'OUTBOX_DUPLICATE_SUBSCRIBER'
  | 'OUTBOX_NOT_SUPPORTED'
  | 'OUTBOX_MIGRATION_FAILED'
  | 'OUTBOX_NOT_MIGRATED'
  | 'OUTBOX_DEDUP_CONFLICT'
  | 'OUTBOX_SUBSCRIPTION_CONFLICT'
  | 'OUTBOX_RELAY_CLUSTER_CHANGED'
  | 'OUTBOX_UNKNOWN_MESSAGE'
  | 'OUTBOX_REPLAY_BEYOND_RETENTION'
  | 'OUTBOX_MISSING_DEPENDENCY';

export class OutboxError extends Error {
  override readonly name = 'OutboxError';
  readonly code: OutboxErrorCode;
  /**
   * The offending value, or a description of it (`{ header, type }`), when there is one. Like the logs, never a
   * payload or a header value, which may hold personal data or tokens.
   */
  readonly value: unknown;

  constructor(code: OutboxErrorCode, message: string, options: { cause?: unknown; value?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.value = options.value;
  }
}

export function isOutboxError(error: unknown, code?: OutboxErrorCode): error is OutboxError {
  return error instanceof OutboxError && (code === undefined || error.code === code);
}

/**
 * Thrown from a handler to schedule the next attempt after `delayMs` instead of the retry policy's backoff.
 * It still counts as an attempt: after `maxAttempts` the delivery is dead-lettered. The delay is rounded to whole
 * milliseconds and held within 0 and 30 days; one that is not a finite number (NaN, Infinity) gets the policy's
 * backoff instead. `retryAfter()` checks the delay where it is made.
 */
export class RetryAfterError extends Error {
  override readonly name = 'RetryAfterError';
  constructor(
    readonly delayMs: number,
    message = `retry requested in ${delayMs} ms`,
  ) {
    super(message);
  }
}

/** Thrown from a handler to dead-letter the delivery at once, without further attempts. */
export class DiscardError extends Error {
  override readonly name: string = 'DiscardError';
}

export function retryAfter(delayMs: number, reason?: string): RetryAfterError {
  if (!Number.isFinite(delayMs) || delayMs < 0) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `retryAfter(delayMs) needs a finite number >= 0, got ${delayMs}`,
      {
        value: delayMs,
      },
    );
  }
  return new RetryAfterError(Math.round(delayMs), reason);
}

export function discard(reason: string): DiscardError {
  return new DiscardError(reason);
}
