import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// The audit views show every step of a scripted history: statuses, attempts, times, consumers and the failure
// history (the README's recipes run in readme-sql.test.ts; this file walks the states one by one).

interface DeliveryRow {
  subscription: string;
  status: string;
  attempts: number;
  first_attempt_at: Date | null;
  last_attempt_at: Date | null;
  completed_at: Date | null;
  last_error: string | null;
  consumer: string | null;
  published_at: Date;
  relayed_at: Date;
  due_at: Date | null;
  leased_until: Date | null;
}

describe('audit trail', () => {
  let t: OutboxTestContext;
  const running: Outbox[] = [];
  const fast = { retry: { minDelayMs: 0, maxDelayMs: 0 }, pollIntervalMs: 20 };

  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((o) => o.stop()));
  });
  afterAll(async () => t.close());

  const outbox = (instance: string, overrides = {}) => {
    const o = t.outbox({ instance, relay: { pollIntervalMs: 5 }, ...overrides });
    running.push(o);
    return o;
  };
  const deliveries = async (messageId: string | undefined) =>
    (
      await t.pool.query<DeliveryRow>(
        `SELECT * FROM outbox.audit_deliveries WHERE message_id = $1::bigint ORDER BY subscription, delivery_id`,
        [messageId],
      )
    ).rows;
  const failures = async (messageId: string | undefined) =>
    (
      await t.pool.query<{ subscription: string; attempt: number; error: string; consumer: string }>(
        `SELECT subscription, attempt, error, consumer FROM outbox.audit_failures
         WHERE message_id = $1::bigint ORDER BY failed_at, attempt`,
        [messageId],
      )
    ).rows;
  const statusOf = async (messageId: string | undefined) => (await deliveries(messageId))[0]?.status;

  it('shows a delivery pending, in flight, failed and retried, done, dead and replayed, with times and consumers', async () => {
    const o = outbox('trail-1');
    await o.declareSubscription('trail', { topics: ['trail.job'] });
    await o.start(); // the relay; the consumer joins below, once the delivery has been seen pending
    const { id } = await o.publish(t.pool, 'trail.job', { n: 1 }, { key: 'job-1' });
    await waitFor('relayed and pending', async () => (await statusOf(id)) === 'pending');

    let release: () => void = () => undefined;
    let calls = 0;
    o.subscribe('trail', { topics: ['trail.job'], maxAttempts: 2, ...fast }, async () => {
      calls += 1;
      if (calls === 1) await new Promise<void>((resolve) => (release = resolve));
      throw new Error(`attempt ${calls} failed`);
    });
    await waitFor('in flight', async () => (await statusOf(id)) === 'in_flight');
    const inFlight = (await deliveries(id))[0];
    expect(inFlight?.leased_until?.getTime()).toBeGreaterThan(inFlight?.published_at.getTime() ?? Infinity);
    expect(inFlight?.consumer).toMatch(/^[^:]+:\d+:trail-1$/);
    release();
    await waitFor('dead after two attempts', async () => (await statusOf(id)) === 'dead');
    const dead = (await deliveries(id))[0];
    expect(dead).toMatchObject({
      attempts: 2,
      last_error: expect.stringContaining('attempt 2 failed') as unknown,
    });
    expect(dead?.relayed_at.getTime()).toBeGreaterThanOrEqual(dead?.published_at.getTime() ?? Infinity);
    expect(dead?.first_attempt_at?.getTime()).toBeLessThan(dead?.last_attempt_at?.getTime() ?? -Infinity);
    expect(dead?.last_attempt_at?.getTime()).toBeLessThanOrEqual(dead?.completed_at?.getTime() ?? -Infinity);
    expect((await failures(id)).map((f) => [f.attempt, f.error.split('\n')[0]])).toEqual([
      [1, 'Error: attempt 1 failed'],
      [2, 'Error: attempt 2 failed'],
    ]);
    await o.stop();

    // Replayed with a handler that now succeeds: done at its first new attempt, the failures kept.
    const fixed = outbox('trail-2');
    fixed.subscribe('trail', { topics: ['trail.job'], ...fast }, () => undefined);
    const [dl] = await fixed.deadLetters('trail');
    expect(await fixed.replay('trail', { ids: [dl?.deliveryId ?? '0'] })).toEqual({ replayed: 1 });
    await fixed.start();
    await waitFor('done after the replay', async () => (await statusOf(id)) === 'done');
    const done = (await deliveries(id))[0];
    expect(done).toMatchObject({ attempts: 1, consumer: expect.stringMatching(/:trail-2$/) as unknown });
    expect((await failures(id)).length).toBe(2);
    const journey = await fixed.journey(id);
    expect(journey?.deliveries.map((d) => [d.subscription, d.status, d.attempts])).toEqual([
      ['trail', 'done', 1],
    ]);
    expect(journey?.failures.map((f) => f.attempt)).toEqual([1, 2]);
  });

  it('shows a delayed message, then cancelled', async () => {
    const o = outbox('trail-3');
    await o.declareSubscription('later', { topics: ['trail.later'] });
    await o.start();
    const { id } = await o.publish(t.pool, 'trail.later', {}, { delayMs: 3_600_000 });
    await waitFor('relayed and delayed', async () => (await statusOf(id)) === 'delayed');
    const [row] = await deliveries(id);
    const wait = (row?.due_at?.getTime() ?? 0) - (row?.published_at.getTime() ?? 0);
    expect(Math.abs(wait - 3_600_000)).toBeLessThan(60_000);
    expect(await o.cancel(t.pool, id)).toEqual({ cancelled: 1 });
    expect(await statusOf(id)).toBe('cancelled');
    const { rows } = await t.pool.query<{ cancelled_at: Date | null; relayed: boolean }>(
      `SELECT cancelled_at, relayed FROM outbox.audit_messages WHERE message_id = $1::bigint`,
      [id],
    );
    expect(rows[0]?.cancelled_at).toBeInstanceOf(Date);
    expect(rows[0]?.relayed).toBe(true);
  });

  it('records a lease that ran out as a failure of the consumer that held it', async () => {
    const first = outbox('trail-4', { shutdownTimeoutMs: 0 });
    await first.declareSubscription('leased', { topics: ['trail.leased'] });
    first.subscribe(
      'leased',
      { topics: ['trail.leased'], leaseMs: 300, ...fast },
      () => new Promise(() => undefined),
    );
    await first.start();
    const { id } = await first.publish(t.pool, 'trail.leased', {});
    await waitFor('in flight at the first consumer', async () => (await statusOf(id)) === 'in_flight');
    // Stopped without waiting for its handler: nothing extends the lease any more, and nothing gives it back.
    await first.stop();
    const second = outbox('trail-5');
    second.subscribe('leased', { topics: ['trail.leased'], ...fast }, () => undefined);
    await second.start();
    await waitFor('done by the second consumer', async () => (await statusOf(id)) === 'done', 30_000);
    expect(await failures(id)).toEqual([
      {
        subscription: 'leased',
        attempt: 1,
        error: expect.stringContaining('lease expired') as unknown,
        consumer: expect.stringMatching(/:trail-4$/) as unknown,
      },
    ]);
    expect((await deliveries(id))[0]).toMatchObject({
      attempts: 2,
      consumer: expect.stringMatching(/:trail-5$/) as unknown,
    });
  });

  it('shows one message to three subscriptions, and the figures per subscription', async () => {
    const o = outbox('trail-6');
    for (const name of ['fan-a', 'fan-b', 'fan-c'])
      await o.declareSubscription(name, { topics: ['trail.fan'] });
    o.subscribe('fan-a', { topics: ['trail.fan'], ...fast }, () => undefined);
    await o.start();
    const { id } = await o.publish(
      t.pool,
      'trail.fan',
      { n: 3 },
      { key: 'fan', headers: { 'x-trace': 't1' } },
    );
    await waitFor('done in fan-a', async () => (await deliveries(id))[0]?.status === 'done');
    expect((await deliveries(id)).map((d) => [d.subscription, d.status])).toEqual([
      ['fan-a', 'done'],
      ['fan-b', 'pending'],
      ['fan-c', 'pending'],
    ]);
    const { rows } = await t.pool.query<Record<string, unknown>>(
      `SELECT subscription, pending::int, in_flight::int, dead::int, done_last_hour::int, relay_backlog::int
       FROM outbox.audit_subscriptions WHERE subscription LIKE 'fan-%' ORDER BY subscription`,
    );
    expect(rows).toEqual([
      { subscription: 'fan-a', pending: 0, in_flight: 0, dead: 0, done_last_hour: 1, relay_backlog: 0 },
      { subscription: 'fan-b', pending: 1, in_flight: 0, dead: 0, done_last_hour: 0, relay_backlog: 0 },
      { subscription: 'fan-c', pending: 1, in_flight: 0, dead: 0, done_last_hour: 0, relay_backlog: 0 },
    ]);
    const status = await o.status();
    expect(
      status.subscriptions
        .filter((s) => s.name.startsWith('fan-'))
        .map((s) => [s.name, s.pending, s.doneLastHour]),
    ).toEqual([
      ['fan-a', 0, 1],
      ['fan-b', 1, 0],
      ['fan-c', 1, 0],
    ]);
    const message = (await o.journey(id))?.message;
    expect(message).toMatchObject({
      topic: 'trail.fan',
      key: 'fan',
      headers: { 'x-trace': 't1' },
      payload: { n: 3 },
      relayed: true,
    });
    expect(message?.relayedAt).toBeInstanceOf(Date);
  });
});
