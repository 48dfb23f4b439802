import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isOutboxError, type Outbox } from '../../src/index.js';
import { count, doneCount, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { thrown } from '../helpers/thrown.js';

describe('flow control', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 40 });
  });
  afterAll(async () => t.close());

  const done = (subscription: string) => doneCount(t.pool, subscription);

  /** Three Outboxes on their own connections, each with a consumer of the subscription: competing consumers. */
  function competing(n = 3): Outbox[] {
    return Array.from({ length: n }, () => t.outbox({ relay: { enabled: true, pollIntervalMs: 5 } }));
  }

  it('holds a rate limit across three competing consumers: the drain takes at least what the rate allows', async () => {
    const name = 'rated';
    const topic = 'flow.rated';
    const total = 300;
    const perSecond = 100;
    const burst = 10;
    const outboxes = competing();
    await outboxes[0]!.declareSubscription(name, { topics: [topic], rateLimit: { perSecond, burst } });
    await outboxes[0]!.publishMany(
      t.pool,
      Array.from({ length: total }, (_, i) => ({ topic, payload: { i } })),
    );
    const {
      rows: [start],
    } = await t.pool.query<{ at: Date }>('SELECT clock_timestamp() AS at');
    for (const outbox of outboxes) {
      outbox.subscribe(name, { topics: [topic], batchSize: 50, concurrency: 20 }, () => undefined);
      await outbox.start();
    }
    await waitFor('all handled', async () => (await done(name)) === total, 60_000, 50);
    const { rows } = await t.pool.query<{ last: Date; consumers: number }>(
      `SELECT max(first_attempt_at) AS last, count(DISTINCT consumer) AS consumers
       FROM outbox.audit_deliveries WHERE subscription = $1`,
      [name],
    );
    const elapsedS = (rows[0]!.last.getTime() - start!.at.getTime()) / 1000;
    // The bucket starts full (burst) and refills at perSecond: the last hand-out cannot come sooner than this.
    // A slower machine only takes longer; a limit per process (three times the rate) would take a third of it.
    const leastS = (total - burst) / perSecond;
    expect(elapsedS).toBeGreaterThanOrEqual(leastS * 0.97);
    expect(Number(rows[0]!.consumers)).toBe(3);
    await Promise.all(outboxes.map((o) => o.stop()));
  });

  it('keeps at most keyConcurrency deliveries of a key in flight across three consumers, and keys apart', async () => {
    const name = 'per-key';
    const topic = 'flow.keys';
    const perKey = 2;
    const keys = ['k1', 'k2', 'k3'];
    const perKeyMessages = 8;
    const keyless = 5;
    const outboxes = competing();
    await outboxes[0]!.declareSubscription(name, { topics: [topic], keyConcurrency: perKey });
    const inFlight = new Map<string, number>();
    const most = new Map<string, number>();
    const gates: (() => void)[] = [];
    for (const outbox of outboxes) {
      outbox.subscribe(name, { topics: [topic], batchSize: 20, concurrency: 10 }, async (m) => {
        const key = m.key ?? 'none';
        inFlight.set(key, (inFlight.get(key) ?? 0) + 1);
        most.set(key, Math.max(most.get(key) ?? 0, inFlight.get(key)!));
        await new Promise<void>((release) => gates.push(release));
        inFlight.set(key, inFlight.get(key)! - 1);
      });
      await outbox.start();
    }
    const messages = [
      ...keys.flatMap((key) =>
        Array.from({ length: perKeyMessages }, (_, i) => ({ topic, key, payload: { key, i } })),
      ),
      ...Array.from({ length: keyless }, (_, i) => ({ topic, payload: { i } })),
    ];
    await outboxes[0]!.publishMany(t.pool, messages);
    // Every slot a key may have, plus every keyless message: all running at once, and no more.
    await waitFor('slots full', () => gates.length === keys.length * perKey + keyless);
    expect(most.get('none')).toBe(keyless);
    // Release one handler at a time: each settle frees a slot that three consumers race to fill.
    for (let released = 0; released < messages.length; released++) {
      const release = await waitFor('a running handler', () => gates.shift());
      release();
    }
    await waitFor('all done', async () => (await done(name)) === messages.length);
    for (const key of keys) expect(most.get(key)).toBe(perKey);
    await Promise.all(outboxes.map((o) => o.stop()));
  });

  it('stores the limits with the subscription: a consumer asking for others is refused, null removes them', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('limited', {
      topics: ['flow.limited'],
      rateLimit: { perSecond: 50 },
      keyConcurrency: 3,
    });
    const { rows } = await t.pool.query(
      `SELECT rate_limit, rate_burst, key_concurrency, b.tokens
       FROM outbox.subscriptions s JOIN outbox.rate_buckets b ON b.subscription_id = s.id
       WHERE s.name = 'limited'`,
    );
    expect(rows).toEqual([{ rate_limit: 50, rate_burst: 5, key_concurrency: 3, tokens: 5 }]);

    const other = t.outbox();
    other.subscribe('limited', { topics: ['flow.limited'], keyConcurrency: 4 }, () => undefined);
    const error: unknown = await other.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isOutboxError(error, 'OUTBOX_SUBSCRIPTION_CONFLICT')).toBe(true);
    expect((error as Error).message).toContain('--key-concurrency 4');

    await outbox.declareSubscription('limited', { topics: ['flow.limited'], rateLimit: null });
    const after = await t.pool.query(
      `SELECT rate_limit, key_concurrency FROM outbox.subscriptions WHERE name = 'limited'`,
    );
    expect(after.rows).toEqual([{ rate_limit: null, key_concurrency: 3 }]);
  });

  it.each([
    ['a rate of 0', { rateLimit: { perSecond: 0 } }, 'OUTBOX_INVALID_OPTION'],
    ['a burst below 1', { rateLimit: { perSecond: 10, burst: 0.5 } }, 'OUTBOX_INVALID_OPTION'],
    ['a rate that is not a number', { rateLimit: { perSecond: '10' } }, 'OUTBOX_INVALID_OPTION'],
    ['an unknown rateLimit key', { rateLimit: { perSecond: 10, perMinute: 5 } }, 'OUTBOX_UNKNOWN_OPTION'],
    ['keyConcurrency 0', { keyConcurrency: 0 }, 'OUTBOX_INVALID_OPTION'],
    ['keyConcurrency 1.5', { keyConcurrency: 1.5 }, 'OUTBOX_INVALID_OPTION'],
  ])('rejects %s before anything is written', async (_, limits, code) => {
    const outbox = t.outbox();
    const name = `bad-${code}-${Math.random().toString(36).slice(2, 8)}`;
    const declared = await outbox
      .declareSubscription(name, { topics: ['flow.bad'], ...(limits as object) })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(isOutboxError(declared, code as 'OUTBOX_INVALID_OPTION')).toBe(true);
    const subscribed = thrown(() =>
      outbox.subscribe(name, { topics: ['flow.bad'], ...(limits as object) }, () => undefined),
    );
    expect(isOutboxError(subscribed, code as 'OUTBOX_INVALID_OPTION')).toBe(true);
    expect(
      await count(t.pool, 'SELECT count(*) AS n FROM outbox.subscriptions WHERE name = $1', [name]),
    ).toBe(0);
  });

  it('refuses keyConcurrency on an ordered subscription', async () => {
    const outbox = t.outbox();
    const error: unknown = await outbox
      .declareSubscription('ordered-limited', { topics: ['flow.o'], ordered: true, keyConcurrency: 2 })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(isOutboxError(error, 'OUTBOX_INVALID_OPTION')).toBe(true);
    expect((error as Error).message).toContain('unordered');
  });
});
