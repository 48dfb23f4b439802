import pg from 'pg';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { OutboxError, type OutboxOptions, type SubscribeOptions } from '../../src/index.js';
import { resolveOptions } from '../../src/options.js';
import { resolveSubscribeOptions } from '../../src/subscribe-options.js';
import { thrown } from '../helpers/thrown.js';

// Never connected: resolving options must not touch the database.
const pool = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/never' });
afterAll(() => pool.end());

function expectCode(fn: () => unknown, code: string, value?: unknown): void {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(OutboxError);
  expect(error).toMatchObject(value === undefined ? { code } : { code, value });
}

const withOptions = (extra: Record<string, unknown>) => () => resolveOptions({ pool, ...extra });
const subscribeWith = (extra: Record<string, unknown>) => () =>
  resolveSubscribeOptions({ topics: ['order.paid'], ...extra });

describe('resolveOptions', () => {
  it('fills in the documented defaults', () => {
    const resolved = resolveOptions({ pool });
    expect(resolved).toMatchObject({
      pool,
      schema: { name: 'outbox', quoted: '"outbox"' },
      maxPayloadBytes: 1_048_576,
      relay: { enabled: true, batchSize: 1000, pollIntervalMs: 20, standbyPollMs: 1000 },
      consumers: true,
      shutdownTimeoutMs: 10_000,
    });
    expect(typeof resolved.logger.info).toBe('function');
  });

  it('keeps every valid option it is given', () => {
    const logger = pino({ level: 'silent' });
    const resolved = resolveOptions({
      pool,
      schema: 'billing_outbox',
      logger,
      maxPayloadBytes: 10,
      relay: { enabled: false, batchSize: 5, pollIntervalMs: 1, standbyPollMs: 10 },
      consumers: false,
      shutdownTimeoutMs: 0,
    });
    expect(resolved).toMatchObject({
      schema: { name: 'billing_outbox', quoted: '"billing_outbox"' },
      logger,
      maxPayloadBytes: 10,
      relay: { enabled: false, batchSize: 5, pollIntervalMs: 1, standbyPollMs: 10 },
      consumers: false,
      shutdownTimeoutMs: 0,
    });
  });

  it('rejects an unknown option with OUTBOX_UNKNOWN_OPTION naming it', () => {
    expectCode(withOptions({ schemaName: 'outbox' }), 'OUTBOX_UNKNOWN_OPTION', 'schemaName');
    expectCode(withOptions({ relay: { batchsize: 10 } }), 'OUTBOX_UNKNOWN_OPTION', 'batchsize');
    expect((thrown(withOptions({ maxPayload: 1 })) as Error).message).toMatch(/maxPayloadBytes/);
  });

  it.each([
    ['maxPayloadBytes', 0],
    ['maxPayloadBytes', -1],
    ['maxPayloadBytes', 1.5],
    ['maxPayloadBytes', Number.NaN],
    ['maxPayloadBytes', Number.POSITIVE_INFINITY],
    ['maxPayloadBytes', '1000'],
    ['maxPayloadBytes', 256 * 1_048_576 + 1],
    ['shutdownTimeoutMs', -1],
    ['shutdownTimeoutMs', 86_400_001],
    ['consumers', 'yes'],
    ['consumers', 1],
    ['relay', 5],
    ['relay', null],
    ['relay', []],
  ])('rejects %s = %j with OUTBOX_INVALID_OPTION', (name, value) => {
    expectCode(withOptions({ [name]: value }), 'OUTBOX_INVALID_OPTION');
  });

  it.each([
    ['batchSize', 0],
    ['batchSize', 100_001],
    ['pollIntervalMs', 0],
    ['standbyPollMs', 9],
    ['enabled', 'true'],
  ])('rejects relay.%s = %j with OUTBOX_INVALID_OPTION', (name, value) => {
    expectCode(withOptions({ relay: { [name]: value } }), 'OUTBOX_INVALID_OPTION', value);
  });

  it('rejects a missing pool, or a pg Client where a Pool is needed, with OUTBOX_INVALID_OPTION', () => {
    expectCode(() => resolveOptions({} as OutboxOptions), 'OUTBOX_INVALID_OPTION');
    const client = new pg.Client();
    expectCode(() => resolveOptions({ pool: client as unknown as pg.Pool }), 'OUTBOX_INVALID_OPTION');
  });

  it('rejects an invalid schema name with OUTBOX_INVALID_SCHEMA', () => {
    expectCode(withOptions({ schema: 'Billing' }), 'OUTBOX_INVALID_SCHEMA', 'Billing');
  });

  // createOutbox(undefined) from plain JavaScript: options.ts reads options.pool before checking options.
  it('rejects no options at all with OUTBOX_INVALID_OPTION, not a TypeError', () => {
    expectCode(() => resolveOptions(undefined as unknown as OutboxOptions), 'OUTBOX_INVALID_OPTION');
    expectCode(() => resolveOptions(null as unknown as OutboxOptions), 'OUTBOX_INVALID_OPTION');
  });
});

describe('resolveSubscribeOptions', () => {
  it('fills in the documented defaults and compiles the topic filter', () => {
    expect(resolveSubscribeOptions({ topics: ['order.paid', 'user.*'] })).toEqual({
      filter: {
        topics: ['order.paid', 'user.*'],
        exact: ['order.paid'],
        pattern: '^(user\\.[A-Za-z0-9_-]+)$',
      },
      mode: 'lease',
      // Omitted: the consumer runs with the subscription's stored settings.
      ordered: undefined,
      blockKeyOnDead: undefined,
      maxAttempts: 10,
      batchSize: 1000,
      concurrency: 10,
      leaseMs: 30_000,
      pollIntervalMs: 1000,
      retry: { minDelayMs: 1000, maxDelayMs: 3_600_000 },
    });
  });

  it('keeps every valid option it is given', () => {
    expect(
      resolveSubscribeOptions({
        topics: ['a'],
        mode: 'transactional',
        ordered: false,
        maxAttempts: 1,
        batchSize: 10_000,
        concurrency: 1,
        leaseMs: 100,
        pollIntervalMs: 5,
        retry: { minDelayMs: 0, maxDelayMs: 0 },
      }),
    ).toMatchObject({
      mode: 'transactional',
      maxAttempts: 1,
      batchSize: 10_000,
      concurrency: 1,
      leaseMs: 100,
      pollIntervalMs: 5,
      retry: { minDelayMs: 0, maxDelayMs: 0 },
    });
  });

  it('rejects an unknown option with OUTBOX_UNKNOWN_OPTION naming it', () => {
    expectCode(subscribeWith({ topic: 'order.paid' }), 'OUTBOX_UNKNOWN_OPTION', 'topic');
    expectCode(subscribeWith({ retry: { max: 1 } }), 'OUTBOX_UNKNOWN_OPTION', 'max');
  });

  it('rejects blockKeyOnDead with ordered: false with OUTBOX_INVALID_OPTION', () => {
    expectCode(subscribeWith({ ordered: false, blockKeyOnDead: true }), 'OUTBOX_INVALID_OPTION');
    // With ordered omitted the stored setting decides, when the consumer starts.
    expect(resolveSubscribeOptions({ topics: ['a'], blockKeyOnDead: true })).toMatchObject({
      blockKeyOnDead: true,
    });
    expect(resolveSubscribeOptions({ topics: ['a'], ordered: true, blockKeyOnDead: true })).toMatchObject({
      ordered: true,
      blockKeyOnDead: true,
    });
  });

  it.each([
    ['mode', 'batch'],
    ['ordered', 'yes'],
    ['maxAttempts', 0],
    ['maxAttempts', 1001],
    ['maxAttempts', 2.5],
    ['batchSize', 0],
    ['batchSize', 10_001],
    ['concurrency', 0],
    ['concurrency', '4'],
    ['leaseMs', 99],
    ['pollIntervalMs', 4],
    ['retry', 'fast'],
  ])('rejects %s = %j with OUTBOX_INVALID_OPTION', (name, value) => {
    expectCode(subscribeWith({ [name]: value }), 'OUTBOX_INVALID_OPTION');
  });

  it('rejects retry.maxDelayMs below retry.minDelayMs with OUTBOX_INVALID_OPTION', () => {
    expectCode(subscribeWith({ retry: { minDelayMs: 5000, maxDelayMs: 4999 } }), 'OUTBOX_INVALID_OPTION');
    expectCode(subscribeWith({ retry: { minDelayMs: -1 } }), 'OUTBOX_INVALID_OPTION');
  });

  it('rejects missing or empty topics with OUTBOX_INVALID_OPTION', () => {
    expectCode(() => resolveSubscribeOptions({} as SubscribeOptions), 'OUTBOX_INVALID_OPTION');
    expectCode(subscribeWith({ topics: [] }), 'OUTBOX_INVALID_OPTION');
    expectCode(
      () => resolveSubscribeOptions(undefined as unknown as SubscribeOptions),
      'OUTBOX_INVALID_OPTION',
    );
  });

  it('rejects an invalid topic filter with OUTBOX_INVALID_TOPIC', () => {
    expectCode(subscribeWith({ topics: ['order.#.paid'] }), 'OUTBOX_INVALID_TOPIC', 'order.#.paid');
  });

  // options.ts: the maxDelayMs default (1 hour) is returned without the `>= minDelayMs` check that an explicit
  // value gets, so a minDelayMs above one hour resolves to a policy whose cap is below its floor.
  it('never resolves a retry policy whose maxDelayMs is below its minDelayMs', () => {
    let resolved: ReturnType<typeof resolveSubscribeOptions> | undefined;
    try {
      resolved = resolveSubscribeOptions({ topics: ['a'], retry: { minDelayMs: 7_200_000 } });
    } catch (error) {
      // Rejecting the combination is fine too, as long as it is an OutboxError.
      expect(error).toMatchObject({ code: 'OUTBOX_INVALID_OPTION' });
      return;
    }
    expect(resolved.retry.maxDelayMs).toBeGreaterThanOrEqual(resolved.retry.minDelayMs);
  });
});
