import { describe, expect, it } from 'vitest';
import { discard, DiscardError, retryAfter, RetryAfterError } from '../../src/index.js';
import { backoffMs, errorText, failureOutcome, type RetryPolicy } from '../../src/consumer/retry-policy.js';

const policy: RetryPolicy = { maxAttempts: 5, minDelayMs: 1000, maxDelayMs: 60_000 };
const lowest = () => 0;
const highest = () => 1 - Number.EPSILON;

describe('backoffMs', () => {
  it('doubles the ceiling each attempt from minDelayMs', () => {
    expect([1, 2, 3, 4, 5].map((a) => backoffMs(a, policy, highest))).toEqual([
      1000, 2000, 4000, 8000, 16_000,
    ]);
    expect([1, 2, 3, 4, 5].map((a) => backoffMs(a, policy, lowest))).toEqual([500, 1000, 2000, 4000, 8000]);
  });

  it('caps the ceiling at maxDelayMs, even for huge attempt numbers', () => {
    for (const attempt of [7, 8, 20, 41, 100, 1000, 1_000_000]) {
      expect(backoffMs(attempt, policy, highest)).toBe(60_000);
      expect(backoffMs(attempt, policy, lowest)).toBe(30_000);
    }
  });

  it('draws every delay from the upper half of the ceiling: [ceiling/2, ceiling]', () => {
    const wide: RetryPolicy = { maxAttempts: 100, minDelayMs: 3, maxDelayMs: 7_777_777 };
    for (let attempt = 1; attempt <= 40; attempt += 1) {
      const ceiling = Math.min(wide.maxDelayMs, wide.minDelayMs * 2 ** (attempt - 1));
      for (let i = 0; i < 50; i += 1) {
        const delay = backoffMs(attempt, wide);
        expect(Number.isInteger(delay)).toBe(true);
        expect(delay).toBeGreaterThanOrEqual(Math.floor(ceiling / 2));
        expect(delay).toBeLessThanOrEqual(ceiling);
      }
    }
  });

  it('never decreases from one attempt to the next for the same random draw', () => {
    for (const r of [0, 0.25, 0.5, 0.99]) {
      let previous = 0;
      for (let attempt = 1; attempt <= 30; attempt += 1) {
        const delay = backoffMs(attempt, policy, () => r);
        expect(delay).toBeGreaterThanOrEqual(previous);
        previous = delay;
      }
    }
  });

  it('returns 0 when minDelayMs is 0', () => {
    expect(backoffMs(5, { maxAttempts: 10, minDelayMs: 0, maxDelayMs: 1000 }, highest)).toBe(0);
  });
});

describe('failureOutcome', () => {
  it('dead-letters a DiscardError at once, on the first attempt', () => {
    expect(failureOutcome(discard('bad payload'), 1, policy)).toEqual({ outcome: 'dead', delayMs: 0 });
    expect(failureOutcome(new DiscardError('x'), 1, policy)).toEqual({ outcome: 'dead', delayMs: 0 });
  });

  it('retries after the delay a RetryAfterError asks for, instead of the backoff', () => {
    expect(failureOutcome(retryAfter(1234), 1, policy)).toEqual({ outcome: 'retry', delayMs: 1234 });
    expect(failureOutcome(new RetryAfterError(0), 4, policy)).toEqual({ outcome: 'retry', delayMs: 0 });
    expect(failureOutcome(retryAfter(999_999_999), 2, policy)).toEqual({
      outcome: 'retry',
      delayMs: 999_999_999,
    });
  });

  it('dead-letters at attempt >= maxAttempts, whatever was thrown', () => {
    for (const error of [new Error('boom'), retryAfter(10), 'a string', undefined]) {
      expect(failureOutcome(error, 5, policy)).toEqual({ outcome: 'dead', delayMs: 0 });
      expect(failureOutcome(error, 6, policy)).toEqual({ outcome: 'dead', delayMs: 0 });
    }
  });

  it('retries an ordinary error with the backoff of its attempt', () => {
    for (let attempt = 1; attempt < policy.maxAttempts; attempt += 1) {
      const ceiling = Math.min(policy.maxDelayMs, policy.minDelayMs * 2 ** (attempt - 1));
      const { outcome, delayMs } = failureOutcome(new Error('boom'), attempt, policy);
      expect(outcome).toBe('retry');
      expect(delayMs).toBeGreaterThanOrEqual(ceiling / 2);
      expect(delayMs).toBeLessThanOrEqual(ceiling);
    }
  });

  it('retries something thrown that is not an Error', () => {
    expect(failureOutcome('oops', 1, policy).outcome).toBe('retry');
    expect(failureOutcome(null, 1, policy).outcome).toBe('retry');
  });
});

describe('retryAfter and discard', () => {
  it('rounds the delay to whole milliseconds', () => {
    expect(retryAfter(12.6).delayMs).toBe(13);
    expect(retryAfter(0).delayMs).toBe(0);
  });

  it.each([-1, Number.NaN, Number.POSITIVE_INFINITY])(
    'rejects the delay %s with OUTBOX_INVALID_OPTION',
    (delay) => {
      expect(() => retryAfter(delay)).toThrowError(
        expect.objectContaining({ code: 'OUTBOX_INVALID_OPTION' }),
      );
    },
  );

  it('keeps the reason as the message', () => {
    expect(retryAfter(5, 'rate limited').message).toBe('rate limited');
    expect(discard('unparseable').message).toBe('unparseable');
    expect(discard('x')).toBeInstanceOf(DiscardError);
  });
});

describe('errorText', () => {
  it('stores the stack of an Error, which starts with its name and message', () => {
    expect(errorText(new TypeError('no such field'))).toMatch(/^TypeError: no such field\n\s+at /);
  });

  it('stores something thrown that is not an Error as a string', () => {
    expect(errorText('plain string')).toBe('plain string');
    expect(errorText(42)).toBe('42');
    expect(errorText(undefined)).toBe('undefined');
  });

  it('bounds a long error to 4000 characters plus an ellipsis', () => {
    const text = errorText('x'.repeat(10_000));
    expect(text).toHaveLength(4001);
    expect(text.endsWith('…')).toBe(true);
    expect(errorText('y'.repeat(4000))).toBe('y'.repeat(4000));
  });
});

const THIRTY_DAYS_MS = 30 * 86_400_000;

describe('failureOutcome with a requested delay the database cannot store', () => {
  it.each([
    [1.5, 2],
    [0.4, 0],
    [-5, 0],
    [-1.5, 0],
    [1e20, THIRTY_DAYS_MS],
    [Number.MAX_VALUE, THIRTY_DAYS_MS],
    [THIRTY_DAYS_MS + 1, THIRTY_DAYS_MS],
  ])('retries a RetryAfterError(%s) after %s ms', (requested, delayMs) => {
    expect(failureOutcome(new RetryAfterError(requested), 1, policy)).toEqual({ outcome: 'retry', delayMs });
  });

  it.each([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, '100' as unknown as number])(
    'retries a RetryAfterError(%s) with the backoff of its attempt',
    (requested) => {
      const { outcome, delayMs } = failureOutcome(new RetryAfterError(requested), 3, policy);
      expect(outcome).toBe('retry');
      expect(delayMs).toBeGreaterThanOrEqual(2000);
      expect(delayMs).toBeLessThanOrEqual(4000);
    },
  );

  it('retries with the backoff when the thrown value cannot even be inspected', () => {
    const hostile = new Proxy(
      {},
      {
        getPrototypeOf() {
          throw new Error('no prototype');
        },
      },
    );
    expect(failureOutcome(hostile, 1, policy).outcome).toBe('retry');
    expect(failureOutcome(hostile, 5, policy)).toEqual({ outcome: 'dead', delayMs: 0 });
  });
});

describe('errorText of text Postgres cannot store', () => {
  it('replaces NUL characters with U+FFFD', () => {
    const text = errorText(new Error('bad\u0000byte'));
    expect(text).not.toContain('\u0000');
    expect(text).toMatch(/^Error: bad\uFFFDbyte\n/);
    expect(errorText('a\u0000\u0000b')).toBe('a\uFFFD\uFFFDb');
  });

  it('does not cut a surrogate pair in half at the bound', () => {
    const text = errorText(`${'x'.repeat(3999)}😀 and more`);
    expect(text).toBe(`${'x'.repeat(3999)}…`);
  });
});

describe('errorText of a thrown value that String() cannot convert', () => {
  const stackThrows = new Error('boom');
  Object.defineProperty(stackThrows, 'stack', {
    get() {
      throw new Error('no stack');
    },
  });
  const allThrow = new Error('boom');
  for (const name of ['stack', 'message']) {
    Object.defineProperty(allThrow, name, {
      get() {
        throw new Error(`no ${name}`);
      },
    });
  }
  const hostile = new Proxy(
    {},
    {
      getPrototypeOf() {
        throw new Error('no prototype');
      },
    },
  );

  it.each([
    ['Object.create(null)', Object.create(null) as unknown],
    [
      'an object whose toString throws',
      {
        toString() {
          throw new Error('no');
        },
      },
    ],
    ['an Error whose stack and message getters throw', allThrow],
  ])('gives a placeholder for %s', (_, value) => {
    expect(errorText(value)).toBe('non-printable thrown value (object)');
  });

  it('converts a Proxy whose getPrototypeOf trap throws (instanceof Error throws) with String()', () => {
    expect(errorText(hostile)).toBe('[object Object]');
  });

  it('falls back to name and message when the stack getter throws', () => {
    expect(errorText(stackThrows)).toBe('Error: boom');
  });

  it('stores a stack that is not a string as name and message', () => {
    const error = new Error('odd');
    Object.defineProperty(error, 'stack', { value: 42 });
    expect(errorText(error)).toBe('Error: odd');
  });
});
