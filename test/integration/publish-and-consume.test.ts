import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OutboxMessage } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

describe('publish, relay and consume', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('delivers a committed message once to every matching subscription and never a rolled-back one', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('points', { topics: ['order.paid'] });
    await outbox.declareSubscription('audit', { topics: ['order.*'] });
    await outbox.declareSubscription('other', { topics: ['user.created'] });
    const seen: Record<string, OutboxMessage[]> = { points: [], audit: [], other: [] };
    for (const name of Object.keys(seen)) {
      const topics = name === 'points' ? ['order.paid'] : name === 'audit' ? ['order.*'] : ['user.created'];
      outbox.subscribe(name, { topics }, (m) => {
        seen[name]?.push(m);
      });
    }
    await outbox.start();

    const client = await t.pool.connect();
    await client.query('BEGIN');
    const committed = await outbox.publish(
      client,
      'order.paid',
      { orderId: 1 },
      { key: 'order-1', headers: { a: 'b' } },
    );
    await client.query('COMMIT');
    await client.query('BEGIN');
    await outbox.publish(client, 'order.paid', { orderId: 2 });
    await client.query('ROLLBACK');
    client.release();

    await waitFor(
      'points and audit handled the message',
      () => seen.points?.length === 1 && seen.audit?.length === 1,
    );
    const m = seen.points?.[0];
    expect(m).toMatchObject({
      id: committed.id,
      topic: 'order.paid',
      key: 'order-1',
      payload: { orderId: 1 },
      headers: { a: 'b' },
      attempt: 1,
      deliverAt: null,
      subscription: 'points',
    });
    expect(m?.createdAt).toBeInstanceOf(Date);
    await waitFor(
      'acks recorded',
      async () =>
        (await count(t.pool, `SELECT count(*) AS n FROM outbox.message_deliveries WHERE state = 'done'`)) ===
        2,
    );
    expect(seen.other).toHaveLength(0);
    expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages')).toBe(1);
    const status = await outbox.status();
    expect(status.relay.backlog).toBe(0);
    expect(status.subscriptions.map((s) => s.name)).toEqual(['audit', 'other', 'points']);
    await outbox.stop();
  });

  it('declares every subscription it runs before its relay starts, so all of them get the waiting messages', async () => {
    // A subscription receives what is relayed after it exists. Six subscribers, messages already waiting, and the
    // declaration of one of them held up by a transaction that inserted the same name and has not finished: the
    // relay must not run before that declaration is done, or the held-up subscription misses the backlog.
    const outbox = t.outbox();
    const names = ['early-a', 'early-b', 'early-c', 'early-d', 'early-e', 'early-f'];
    const handled = new Map(names.map((name) => [name, 0]));
    for (const name of names) {
      outbox.subscribe(name, { topics: ['early.test'], ordered: name === 'early-b' }, () => {
        handled.set(name, (handled.get(name) ?? 0) + 1);
      });
    }
    const total = 1000;
    await outbox.publishMany(
      t.pool,
      Array.from({ length: total }, (_, i) => ({ topic: 'early.test', key: `k${i % 20}`, payload: { i } })),
    );
    // close() stops this outbox if an expectation below fails.
    const blocker = await t.pool.connect();
    let starting: Promise<void> | undefined;
    try {
      await blocker.query('BEGIN');
      await blocker.query(
        `INSERT INTO outbox.subscriptions (name, topics) VALUES ('early-c', '{early.test}')`,
      );
      starting = outbox.start();
      await waitFor('the declaration of early-c to wait for the blocker', async () => {
        const { rows } = await t.pool.query(
          `SELECT 1 FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%subscriptions%'`,
        );
        return rows.length > 0;
      });
      // The relay would take its advisory lock within milliseconds of starting; give it a second to show it did not.
      const relayRan = await waitFor(
        'the relay to start',
        async () =>
          (await count(
            t.pool,
            `SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND d.datname = current_database()`,
          )) > 0,
        1_000,
      ).then(
        () => true,
        () => false,
      );
      expect(relayRan).toBe(false);
    } finally {
      await blocker.query('ROLLBACK');
      blocker.release();
      await starting;
    }
    try {
      await waitFor('every subscription to handle the backlog', () =>
        names.every((n) => (handled.get(n) ?? 0) >= total),
      );
    } finally {
      await outbox.stop();
    }
    const relayed = await t.pool.query<{ subscription: string; n: string }>(
      `SELECT subscription, count(*) AS n FROM outbox.message_deliveries
       WHERE topic = 'early.test' GROUP BY subscription ORDER BY subscription`,
    );
    expect(relayed.rows.map((r) => [r.subscription, Number(r.n)])).toEqual(names.map((n) => [n, total]));
  });
});
