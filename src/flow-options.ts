import { OutboxError } from './errors.js';

/** A subscription's rate limit as stored: deliveries handed out per second, and the tokens an idle bucket keeps. */
export interface StoredRateLimit {
  perSecond: number;
  burst: number;
}

/** The most a rate or a burst may be: well past what one Postgres hands out. */
const MAX_RATE = 1_000_000;
/** The most deliveries of one key in flight a limit may allow. */
const MAX_KEY_CONCURRENCY = 10_000;

/**
 * `rateLimit` of subscribe or declareSubscription: undefined keeps the stored setting, null asks for none, an object
 * sets one. The default burst is a tenth of a second's worth (at least one delivery).
 */
export function resolveRateLimit(value: unknown): StoredRateLimit | null | undefined {
  if (value === undefined || value === null) return value;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'rateLimit must be { perSecond, burst? } (or null for no limit)',
      { value },
    );
  }
  const { perSecond, burst, ...rest } = value as { perSecond?: unknown; burst?: unknown };
  const unknown = Object.keys(rest)[0];
  if (unknown !== undefined) {
    throw new OutboxError(
      'OUTBOX_UNKNOWN_OPTION',
      `Unknown rateLimit option "${unknown}"; known: perSecond, burst`,
      {
        value: unknown,
      },
    );
  }
  const rate = positive('rateLimit.perSecond', perSecond, 0);
  return {
    perSecond: rate,
    burst: burst === undefined ? Math.max(1, rate / 10) : positive('rateLimit.burst', burst, 1),
  };
}

/** `keyConcurrency`: undefined keeps the stored setting, null asks for none, an integer sets the limit. */
export function resolveKeyConcurrency(value: unknown): number | null | undefined {
  if (value === undefined || value === null) return value;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_KEY_CONCURRENCY) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `keyConcurrency must be an integer from 1 to ${MAX_KEY_CONCURRENCY} (or null for no limit)`,
      { value },
    );
  }
  return value;
}

function positive(name: string, value: unknown, min: number): number {
  const tooLow = typeof value === 'number' && (min > 0 ? value < min : value <= 0);
  if (typeof value !== 'number' || !Number.isFinite(value) || tooLow || value > MAX_RATE) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `${name} must be a number ${min > 0 ? `from ${min}` : 'above 0'} up to ${MAX_RATE}`,
      { value },
    );
  }
  return value;
}
