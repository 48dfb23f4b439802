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
});
