import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, OutboxMessage, PublishInput, TransactionalContext } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/** One run of a handler on one delivery; the last run of a delivery is the one whose transaction committed. */
interface Run {
  orderId: number;
  messageId: string;
  instance: number;
  attempt: number;
  duplicate: boolean;
  start: number;
  end: number;
}

/** mulberry32: a seeded generator, so a failing flood can be replayed. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const errorCode = (error: unknown) =>
  typeof error === 'object' && error !== null && 'code' in error ? String(error.code) : 'other';

describe('ctx.once under a flood of duplicate deliveries', () => {
  let t: OutboxTestContext;

  /** Tables of one scenario in a schema of its own. `awards` has no unique constraint: ctx.once alone dedups. */
  async function createTables(schema: string, orders: number, customers: number): Promise<void> {
    await t.pool.query(`
      CREATE SCHEMA ${schema};
      CREATE TABLE ${schema}.orders (id int PRIMARY KEY, customer text NOT NULL, amount int NOT NULL);
      CREATE TABLE ${schema}.points (customer text PRIMARY KEY, total int NOT NULL);
      CREATE TABLE ${schema}.awards (order_id int NOT NULL, customer text NOT NULL, message_id bigint NOT NULL);
      CREATE TABLE ${schema}.duplicates (order_id int NOT NULL, message_id bigint NOT NULL);
      INSERT INTO ${schema}.orders (id, customer, amount)
      SELECT i, 'customer-' || (i % ${customers}), 1 + (i * 7919) % 100 FROM generate_series(1, ${orders}) AS i;`);
  }

  /** The points handler: award once per order; a duplicate is recorded in the same transaction. */
  function awardPoints(schema: string, message: OutboxMessage, ctx: TransactionalContext) {
    const { orderId } = message.payload as { orderId: number };
    return ctx.once(`order:${orderId}`, async (tx) => {
      const { rows } = await tx.query<{ customer: string; amount: number }>(
        `SELECT customer, amount FROM ${schema}.orders WHERE id = $1::int`,
        [orderId],
      );
      const order = rows[0];
      if (order === undefined) throw new Error(`order ${orderId} not found`);
      await tx.query(
        `INSERT INTO ${schema}.awards (order_id, customer, message_id) VALUES ($1::int, $2::text, $3::bigint)`,
        [orderId, order.customer, message.id],
      );
      await tx.query(
        `INSERT INTO ${schema}.points (customer, total) VALUES ($1::text, $2::int)
         ON CONFLICT (customer) DO UPDATE SET total = points.total + excluded.total`,
        [order.customer, order.amount],
      );
    });
  }

  /** SQL checks shared by the scenarios: one award and one key per order, points summed once per order. */
  async function expectAwardedOnce(schema: string, scope: string, orders: number): Promise<void> {
    const q = (sql: string, params: unknown[] = []) => count(t.pool, sql, params);
    expect(await q(`SELECT count(*) AS n FROM ${schema}.awards`)).toBe(orders);
    const wrongAwards = `SELECT count(*) AS n
      FROM ${schema}.orders o
      LEFT JOIN (SELECT order_id, count(*) AS c FROM ${schema}.awards GROUP BY order_id) a ON a.order_id = o.id
      WHERE coalesce(a.c, 0) <> 1`;
    expect(await q(wrongAwards)).toBe(0);
    const wrongTotals = `SELECT count(*) AS n
      FROM (SELECT customer, sum(amount)::int AS total FROM ${schema}.orders GROUP BY customer) e
      FULL JOIN ${schema}.points p USING (customer)
      WHERE e.total IS DISTINCT FROM p.total`;
    expect(await q(wrongTotals)).toBe(0);
    expect(await q(`SELECT count(*) AS n FROM outbox.processed WHERE scope = $1`, [scope])).toBe(orders);
    const keyedOrders = `SELECT count(*) AS n
      FROM outbox.processed p
      JOIN ${schema}.orders o ON p.key = 'order:' || o.id
      WHERE p.scope = $1`;
    expect(await q(keyedOrders, [scope])).toBe(orders);
  }

  /** Waits until every delivery of the subscription is acked, then checks none is left in another state. */
  async function waitAllDone(subscription: string, messages: number): Promise<void> {
    const states = async () => {
      const { rows } = await t.pool.query<{ state: string; n: string }>(
        `SELECT state, count(*) AS n FROM outbox.message_deliveries WHERE subscription = $1 GROUP BY state`,
        [subscription],
      );
      return Object.fromEntries(rows.map((r) => [r.state, Number(r.n)]));
    };
    await waitFor(
      `${messages} deliveries of ${subscription} done`,
      async () => (await states()).done === messages,
      25_000,
    );
    expect(await states()).toEqual({ done: messages });
  }

  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 40 });
  });
  afterAll(async () => {
    await t.close();
  });

  it('awards points exactly once per order when 8 consumers handle 2–5 copies of each order at once', async () => {
    const ORDERS = 400;
    const INSTANCES = 8;
    await createTables('flood', ORDERS, 37);
    const rng = random(20_240_611);
    // Copies of one order land within a window of about 40 messages: claims take up to 10 rows in id order, so
    // the copies go to different consumers, which claim them at nearly the same time.
    const copies: { orderId: number; sortKey: number }[] = [];
    for (let orderId = 1; orderId <= ORDERS; orderId++) {
      const n = 2 + Math.floor(rng() * 4);
      for (let c = 0; c < n; c++) copies.push({ orderId, sortKey: orderId * 4 + rng() * 40 });
    }
    copies.sort((a, b) => a.sortKey - b.sortKey);
    const flood: PublishInput[] = copies.map((c) => ({
      topic: 'flood.order-paid',
      payload: { orderId: c.orderId },
    }));
    // Copies of one order handled at the same moment by different consumers, by construction rather than by luck:
    // the rendezvous order's copies are published alone before the flood, and each of its handlers waits, before
    // ctx.once, until copies run in two consumers. A consumer holds at most batchSize (at most 10 here)
    // deliveries, so one more copy than that reaches a second consumer while the first waits; its chunks hold
    // nothing but these copies then, so no lock of another order keeps the second from arriving.
    const RENDEZVOUS_ORDER = 1;
    const rendezvous: PublishInput[] = Array.from({ length: 11 }, () => ({
      topic: 'flood.order-paid',
      payload: { orderId: RENDEZVOUS_ORDER },
    }));
    const messages = [...rendezvous, ...flood];
    /** Consumers whose handler has started on a copy of the rendezvous order. */
    const atRendezvous = new Set<number>();

    const runs = new Map<string, Run>();
    let handlerRuns = 0;
    const errors = new Map<string, number>();
    const outboxes: Outbox[] = [];
    for (let i = 0; i < INSTANCES; i++) {
      const outbox = t.outbox({ relay: { enabled: i === 0 } });
      outbox.subscribe(
        'flood',
        {
          topics: ['flood.order-paid'],
          mode: 'transactional',
          concurrency: 2 + (i % 3),
          batchSize: 5 + (i % 6),
          pollIntervalMs: 100,
          maxAttempts: 100,
          retry: { minDelayMs: 20, maxDelayMs: 100 },
        },
        async (message, ctx) => {
          const { orderId } = message.payload as { orderId: number };
          const start = performance.now();
          handlerRuns += 1;
          if (orderId === RENDEZVOUS_ORDER) {
            atRendezvous.add(i);
            await waitFor('rendezvous copies running in two consumers', () => atRendezvous.size >= 2);
          }
          try {
            const { duplicate } = await awardPoints('flood', message, ctx);
            if (duplicate) {
              await ctx.tx.query(
                'INSERT INTO flood.duplicates (order_id, message_id) VALUES ($1::int, $2::bigint)',
                [orderId, message.id],
              );
            }
            const end = performance.now();
            runs.set(message.deliveryId, {
              orderId,
              messageId: message.id,
              instance: i,
              attempt: message.attempt,
              duplicate,
              start,
              end,
            });
          } catch (error) {
            errors.set(errorCode(error), (errors.get(errorCode(error)) ?? 0) + 1);
            throw error;
          }
        },
      );
      outboxes.push(outbox);
    }
    await outboxes[0]?.declareSubscription('flood', { topics: ['flood.order-paid'] });
    const startedAt = performance.now();
    await Promise.all(outboxes.map((o) => o.start()));
    await outboxes[0]?.publishMany(t.pool, rendezvous);
    await waitFor('rendezvous copies running in two consumers', () => atRendezvous.size >= 2);
    for (let i = 0; i < flood.length; i += 500)
      await outboxes[0]?.publishMany(t.pool, flood.slice(i, i + 500));

    await waitAllDone('flood', messages.length);
    const elapsedMs = Math.round(performance.now() - startedAt);
    await Promise.all(outboxes.map((o) => o.stop()));

    await expectAwardedOnce('flood', 'flood', ORDERS);
    // Every message either awarded its order or was recorded as a duplicate, in the transaction that acked it.
    const outcomes = `SELECT count(DISTINCT m.id) AS n
      FROM outbox.messages m
      JOIN (SELECT message_id FROM flood.awards UNION ALL SELECT message_id FROM flood.duplicates) x ON x.message_id = m.id
      WHERE m.topic = 'flood.order-paid'`;
    expect(await count(t.pool, outcomes)).toBe(messages.length);
    expect(await count(t.pool, 'SELECT count(*) AS n FROM flood.duplicates')).toBe(messages.length - ORDERS);
    // The last run of each delivery is the committed one: its duplicate flags add up to messages − orders.
    expect(runs.size).toBe(messages.length);
    const duplicates = [...runs.values()].filter((r) => r.duplicate).length;
    expect(duplicates).toBe(messages.length - ORDERS);

    const byOrder = new Map<number, Run[]>();
    for (const r of runs.values()) byOrder.set(r.orderId, [...(byOrder.get(r.orderId) ?? []), r]);
    const overlappingOrders = [...byOrder.entries()]
      .filter(([, rs]) =>
        rs.some((a) => rs.some((b) => a.instance !== b.instance && a.start < b.end && b.start < a.end)),
      )
      .map(([orderId]) => orderId);
    const overlapping = overlappingOrders.length;
    const instancesUsed = new Set([...runs.values()].map((r) => r.instance)).size;
    console.log(
      `flood: ${ORDERS} orders, ${messages.length} deliveries, ${duplicates} duplicates suppressed, ` +
        `${overlapping} orders with copies handled concurrently by different consumers, ${instancesUsed} consumers used, ` +
        `${handlerRuns} handler runs, errors ${JSON.stringify(Object.fromEntries(errors))}, ${elapsedMs} ms`,
    );
    // The rendezvous copies that met ran from before the meeting to after it, in different consumers.
    expect(overlappingOrders).toContain(RENDEZVOUS_ORDER);
  });

  it('awards once when a delivery fails after ctx.once and the retry runs ctx.once again', async () => {
    const ORDERS = 90;
    await createTables('redelivery', ORDERS, 7);
    const runs: Run[] = [];
    /** Attempt whose transaction failed on purpose after ctx.once, per order. */
    const failedAt = new Map<number, number>();
    const errors = new Map<string, number>();
    const outboxes: Outbox[] = [];
    for (let i = 0; i < 4; i++) {
      const outbox = t.outbox({ relay: { enabled: i === 0 } });
      outbox.subscribe(
        'redelivery',
        {
          topics: ['redelivery.order-paid'],
          mode: 'transactional',
          concurrency: 2,
          batchSize: 5,
          pollIntervalMs: 100,
          maxAttempts: 100,
          retry: { minDelayMs: 20, maxDelayMs: 50 },
        },
        async (message, ctx) => {
          const { orderId } = message.payload as { orderId: number };
          const start = performance.now();
          let duplicate: boolean;
          try {
            ({ duplicate } = await awardPoints('redelivery', message, ctx));
          } catch (error) {
            errors.set(errorCode(error), (errors.get(errorCode(error)) ?? 0) + 1);
            throw error;
          }
          runs.push({
            orderId,
            messageId: message.id,
            instance: i,
            attempt: message.attempt,
            duplicate,
            start,
            end: performance.now(),
          });
          // Normally attempt 1; a later one if a deadlock on a points row failed the first before ctx.once returned.
          if (orderId % 3 === 0 && !failedAt.has(orderId)) {
            failedAt.set(orderId, message.attempt);
            throw new Error('failing after the award, on purpose');
          }
        },
      );
      outboxes.push(outbox);
    }
    await outboxes[0]?.declareSubscription('redelivery', { topics: ['redelivery.order-paid'] });
    const startedAt = performance.now();
    await Promise.all(outboxes.map((o) => o.start()));
    const published = await outboxes[0]?.publishMany(
      t.pool,
      Array.from({ length: ORDERS }, (_, k) => ({
        topic: 'redelivery.order-paid',
        payload: { orderId: k + 1 },
      })),
    );
    expect(published).toHaveLength(ORDERS);

    await waitAllDone('redelivery', ORDERS);
    const elapsedMs = Math.round(performance.now() - startedAt);
    await Promise.all(outboxes.map((o) => o.stop()));

    await expectAwardedOnce('redelivery', 'redelivery', ORDERS);
    // The failed first attempt's key rolled back with its award, so no run ever saw the key as taken.
    expect(runs.filter((r) => r.duplicate)).toEqual([]);
    expect(await count(t.pool, 'SELECT count(*) AS n FROM redelivery.duplicates')).toBe(0);
    const failing = Array.from({ length: ORDERS }, (_, k) => k + 1).filter((id) => id % 3 === 0);
    expect([...failedAt.keys()].sort((a, b) => a - b)).toEqual(failing);
    // Each failing order's delivery was acked on an attempt after the failed one, by a run of ctx.once that
    // got { duplicate: false } again.
    const { rows: acked } = await t.pool.query<{ order_id: number; attempt: number }>(
      `SELECT a.order_id, d.attempt
       FROM outbox.message_deliveries d
       JOIN redelivery.awards a ON a.message_id = d.message_id
       WHERE d.subscription = 'redelivery' AND d.state = 'done' AND a.order_id % 3 = 0`,
    );
    expect(acked).toHaveLength(failing.length);
    for (const { order_id: orderId, attempt } of acked) {
      expect(attempt, `order ${orderId}`).toBeGreaterThan(failedAt.get(orderId) ?? Infinity);
      // More than one run of that attempt when another delivery of its chunk failed and the chunk ran again.
      const acking = runs.filter((r) => r.orderId === orderId && r.attempt === attempt);
      expect(acking.length, `order ${orderId}`).toBeGreaterThan(0);
      expect(acking.every((r) => !r.duplicate)).toBe(true);
    }
    console.log(
      `redelivery: ${ORDERS} orders, ${failing.length} failed after ctx.once and were awarded once on a retry, ` +
        `${runs.length} handler runs past ctx.once, errors ${JSON.stringify(Object.fromEntries(errors))}, ${elapsedMs} ms`,
    );
  });

  // src/consumer/transactional-lane.ts runs a chunk of deliveries in one transaction, and each ctx.once keeps its
  // key's row lock in processed until COMMIT. Two lanes that take the same two keys in opposite order deadlock
  // (40P01 "while inserting index tuple in relation processed", after deadlock_timeout, 1 s by default); the
  // victim's handler fails, so its delivery is charged an attempt and waits for the retry backoff although it did
  // nothing wrong. src/sql/processed.ts says "two keys cannot deadlock each other through this statement", true
  // only of one statement. The flood above hits this 5 to 15 times per run (its summary line prints the 40P01s).
  it('acks every delivery on its first attempt when two lanes take the same two ctx.once keys in opposite order', async () => {
    await createTables('crossed', 2, 2);
    const held = new Set<string>();
    const errors: string[] = [];
    const retries: number[] = [];
    const relay = t.outbox({ consumers: false });
    await relay.declareSubscription('crossed', { topics: ['crossed.order-paid'] });
    await relay.start();
    // Lane 1 gets [order 1, order 2], lane 2 gets [order 2, order 1]: the consumer claims all four at once
    // (batchSize 4) and splits them into two chunks of two (concurrency 2).
    await relay.publishMany(t.pool, [
      { topic: 'crossed.order-paid', payload: { orderId: 1, hold: true } },
      { topic: 'crossed.order-paid', payload: { orderId: 2, hold: false } },
      { topic: 'crossed.order-paid', payload: { orderId: 2, hold: true } },
      { topic: 'crossed.order-paid', payload: { orderId: 1, hold: false } },
    ]);
    await waitFor(
      'four deliveries relayed',
      async () =>
        (await count(
          t.pool,
          `SELECT count(*) AS n FROM outbox.message_deliveries WHERE subscription = 'crossed'`,
        )) === 4,
    );
    const consumer = t.outbox({ relay: { enabled: false } });
    consumer.on('delivery:retry', (info) => retries.push(info.attempt));
    consumer.subscribe(
      'crossed',
      {
        topics: ['crossed.order-paid'],
        mode: 'transactional',
        concurrency: 2,
        batchSize: 4,
        pollIntervalMs: 100,
        maxAttempts: 100,
        retry: { minDelayMs: 20, maxDelayMs: 50 },
      },
      async (message, ctx) => {
        const { hold } = message.payload as { hold: boolean };
        try {
          await awardPoints('crossed', message, ctx);
        } catch (error) {
          errors.push(errorCode(error));
          throw error;
        }
        // Each lane holds its first key until the other lane holds its own: the next keys cross.
        if (hold && !held.has(message.id)) {
          held.add(message.id);
          await waitFor('both lanes hold their first key', () => held.size === 2, 10_000);
        }
      },
    );
    await consumer.start();
    await waitAllDone('crossed', 4);
    await Promise.all([consumer.stop(), relay.stop()]);

    await expectAwardedOnce('crossed', 'crossed', 2);
    const { rows } = await t.pool.query<{ attempt: number }>(
      `SELECT attempt FROM outbox.message_deliveries WHERE subscription = 'crossed' ORDER BY message_id`,
    );
    console.log(
      `crossed keys: attempts ${JSON.stringify(rows.map((r) => r.attempt))}, handler errors ${JSON.stringify(errors)}, ` +
        `retries scheduled ${retries.length}`,
    );
    expect(held.size).toBe(2);
    expect(rows.map((r) => r.attempt)).toEqual([1, 1, 1, 1]);
    expect(retries).toEqual([]);
  });
});
