import { randomUUID } from 'node:crypto';
import { createClient } from 'redis';
import { REDIS_URL, redisAnswers } from '../helpers/redis.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWeakCheck, RetryAfterError } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

describe.skipIf(!(await redisAnswers()))('weak idempotency check (Redis)', () => {
  const redis = createClient({ url: REDIS_URL });
  const prefix = `pg-outbox-test:${randomUUID()}:`;
  let t: OutboxTestContext;

  beforeAll(async () => {
    redis.on('error', () => undefined);
    await redis.connect();
    t = await setupOutboxTest();
  });
  afterAll(async () => {
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length > 0) await redis.del(keys);
    await redis.close();
    await t.close();
  });

  it('runs an effect once per key and reports later calls as duplicates', async () => {
    const weak = createWeakCheck(redis, { prefix });
    let runs = 0;
    const effect = () => Promise.resolve(++runs);
    expect(await weak.once('sms', 'order-1', effect)).toEqual({ duplicate: false, result: 1 });
    expect(await weak.once('sms', 'order-1', effect)).toEqual({ duplicate: true });
    expect(await weak.once('sms', 'order-2', effect)).toEqual({ duplicate: false, result: 2 });
    expect(runs).toBe(2);
  });

  it('frees the key when the effect throws, so a retry runs it', async () => {
    const weak = createWeakCheck(redis, { prefix });
    await expect(
      weak.once('sms', 'fails-once', () => Promise.reject(new Error('gateway down'))),
    ).rejects.toThrow('gateway down');
    expect(await weak.once('sms', 'fails-once', () => Promise.resolve('sent'))).toEqual({
      duplicate: false,
      result: 'sent',
    });
  });

  it('lets one of 8 concurrent callers run and asks the others to retry while it runs', async () => {
    const weak = createWeakCheck(redis, { prefix, claimMs: 5_000 });
    let runs = 0;
    let finish: () => void = () => undefined;
    const slow = new Promise<void>((resolve) => (finish = resolve));
    const calls = Array.from({ length: 8 }, () =>
      weak.once('push', 'same', async () => {
        runs++;
        await slow;
      }),
    );
    const settled = Promise.allSettled(calls);
    await waitFor('one effect started', () => runs === 1);
    finish();
    const results = await settled;
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const retries = results.filter((r) => r.status === 'rejected').map((r) => r.reason as unknown);
    expect(retries).toHaveLength(7);
    expect(retries.every((e) => e instanceof RetryAfterError)).toBe(true);
    expect(await weak.once('push', 'same', () => Promise.resolve())).toEqual({ duplicate: true });
    expect(runs).toBe(1);
  });

  it('keeps scope "a:b" with key "c" apart from scope "a" with key "b:c"', async () => {
    const weak = createWeakCheck(redis, { prefix });
    const effect = (name: string) => () => Promise.resolve(name);
    expect(await weak.once('a:b', 'c', effect('first'))).toEqual({ duplicate: false, result: 'first' });
    expect(await weak.once('a', 'b:c', effect('second'))).toEqual({ duplicate: false, result: 'second' });
    expect(await weak.once('a:b', 'c', effect('again'))).toEqual({ duplicate: true });
    expect(await weak.once('a', 'b:c', effect('again'))).toEqual({ duplicate: true });
  });

  it('runs the effect again when its runner died before marking it done (the accepted duplicate)', async () => {
    const weak = createWeakCheck(redis, { prefix, claimMs: 200 });
    // A runner that claimed the key and died: its claim token stays until claimMs.
    await redis.sendCommand(['SET', `${prefix}3:sms:orphan`, 'dead-runner', 'NX', 'PX', '200']);
    await expect(weak.once('sms', 'orphan', () => Promise.resolve())).rejects.toBeInstanceOf(RetryAfterError);
    const result = await waitFor('the claim expired and the effect ran', () =>
      weak.once('sms', 'orphan', () => Promise.resolve('resent')).catch(() => undefined),
    );
    expect(result).toEqual({ duplicate: false, result: 'resent' });
  });

  it('suppresses duplicate notifications in a lease-mode handler', async () => {
    const weak = createWeakCheck(redis, { prefix, busyRetryMs: 50 });
    const outbox = t.outbox();
    const sent: string[] = [];
    let duplicates = 0;
    outbox.subscribe(
      'notify',
      { topics: ['order.paid'], retry: { minDelayMs: 20, maxDelayMs: 50 } },
      async (m) => {
        const orderId = (m.payload as { orderId: number }).orderId;
        const { duplicate } = await weak.once('notify', `order:${orderId}`, () => {
          sent.push(`order:${orderId}`);
          return Promise.resolve();
        });
        if (duplicate) duplicates++;
      },
    );
    await outbox.start();
    // Every order published twice: the second copy is a duplicate delivery.
    await outbox.publishMany(
      t.pool,
      [1, 2, 3, 1, 2, 3].map((orderId) => ({ topic: 'order.paid', payload: { orderId } })),
    );
    await waitFor('all six deliveries handled', () => sent.length + duplicates === 6);
    expect(sent.sort()).toEqual(['order:1', 'order:2', 'order:3']);
    await outbox.stop();
  });
});
