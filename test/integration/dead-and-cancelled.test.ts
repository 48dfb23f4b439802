import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discard } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const LEASE_EXPIRED = 'lease expired before an ack: the consumer crashed, stalled or timed out';
const MESSAGE_MISSING = 'the message no longer exists in the messages table';

describe('dead and cancelled deliveries', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  /** Rows of one subscription in a table, by message id. */
  async function rowsOf<R>(table: string, name: string, columns: string): Promise<Map<string, R>> {
    const { rows } = await t.pool.query<R & { message_id: string }>(
      `SELECT x.message_id::text, ${columns}
       FROM outbox.${table} x
       JOIN outbox.subscriptions s ON s.id = x.subscription_id
       WHERE s.name = $1`,
      [name],
    );
    return new Map(rows.map((r) => [r.message_id, r]));
  }

  const pendingOf = (name: string) =>
    count(
      t.pool,
      `SELECT count(*) AS n FROM outbox.deliveries d JOIN outbox.subscriptions s ON s.id = d.subscription_id
       WHERE s.name = $1 AND d.state = 'pending'`,
      [name],
    );

  /**
   * Declares `name`, publishes one message per label to it and waits for the relay to fan them out, before any
   * consumer runs. Returns the relaying Outbox and the message and delivery ids by label.
   */
  async function relayed(name: string, labels: string[]) {
    const relay = t.outbox();
    await relay.declareSubscription(name, { topics: [`${name}.test`] });
    await relay.start();
    const messageIds: Record<string, string> = {};
    for (const label of labels)
      messageIds[label] = (await relay.publish(t.pool, `${name}.test`, { label })).id;
    const deliveries = await waitFor('all relayed', async () => {
      const rows = await rowsOf<{ id: string }>('deliveries', name, 'x.id::text AS id');
      return rows.size === labels.length ? rows : undefined;
    });
    const deliveryIds = Object.fromEntries(
      labels.map((label) => [label, deliveries.get(messageIds[label] ?? '')?.id]),
    );
    return { relay, messageIds, deliveryIds };
  }

  /**
   * Runs a consumer (maxAttempts 2) that throws discard() for 'discard', fails every attempt of 'fail' and acks
   * the rest, until `done` holds and no delivery of the subscription is left to claim. Returns the labels handled.
   */
  async function consume(
    name: string,
    done: (dead: number, handled: string[]) => boolean,
  ): Promise<string[]> {
    const consumer = t.outbox({ relay: { enabled: false } });
    const handled: string[] = [];
    let dead = 0;
    consumer.on('delivery:dead', () => dead++);
    consumer.subscribe(
      name,
      { topics: [`${name}.test`], maxAttempts: 2, retry: { minDelayMs: 0, maxDelayMs: 5 } },
      (m) => {
        const { label } = m.payload as { label: string };
        handled.push(label);
        if (label === 'discard') throw discard('not wanted');
        if (label === 'fail') throw new Error(`boom on attempt ${m.attempt}`);
      },
    );
    await consumer.start();
    await waitFor('every delivery settled', async () => done(dead, handled) && (await pendingOf(name)) === 0);
    await consumer.stop();
    return handled.sort();
  }

  /** State by message id in the audit view message_deliveries. */
  async function auditStates(name: string): Promise<Record<string, string>> {
    const { rows } = await t.pool.query<{ message_id: string; state: string }>(
      'SELECT message_id::text, state FROM outbox.message_deliveries WHERE subscription = $1',
      [name],
    );
    return Object.fromEntries(rows.map((r) => [r.message_id, r.state]));
  }

  it('dead-letters into dead_deliveries under the delivery id, leaving deliveries empty: discarded, out of attempts, lease run out on the last attempt, message gone', async () => {
    const name = 'dead-moves';
    const labels = ['discard', 'fail', 'expired', 'orphan', 'ok'];
    const { relay, messageIds: ids, deliveryIds } = await relayed(name, labels);
    // What a consumer that crashed during its last attempt leaves: attempt at maxAttempts, lease run out.
    await t.pool.query(
      `UPDATE outbox.deliveries
       SET attempt = 2, leased_until = now() - interval '1 second', available_at = now() - interval '1 second'
       WHERE message_id = $1`,
      [ids.expired],
    );
    await t.pool.query('DELETE FROM outbox.messages WHERE id = $1', [ids.orphan]);

    const handled = await consume(name, (dead, seen) => dead === 4 && seen.includes('ok'));
    expect(handled).toEqual(['discard', 'fail', 'fail', 'ok']);

    const deadRows = await rowsOf<{ id: string; attempt: number; last_error: string; dead_at: Date }>(
      'dead_deliveries',
      name,
      'x.id::text AS id, x.attempt, x.last_error, x.dead_at',
    );
    const byLabel = (label: string) => deadRows.get(ids[label] ?? '');
    expect(byLabel('discard')).toMatchObject({
      id: deliveryIds.discard,
      attempt: 1,
      last_error: expect.stringContaining('not wanted') as string,
    });
    expect(byLabel('fail')).toMatchObject({
      id: deliveryIds.fail,
      attempt: 2,
      last_error: expect.stringContaining('boom on attempt 2') as string,
    });
    expect(byLabel('expired')).toMatchObject({
      id: deliveryIds.expired,
      attempt: 2,
      last_error: LEASE_EXPIRED,
    });
    expect(byLabel('orphan')).toMatchObject({
      id: deliveryIds.orphan,
      attempt: 0,
      last_error: MESSAGE_MISSING,
    });
    expect(deadRows.size).toBe(4);
    for (const row of deadRows.values()) expect(row.dead_at).toBeInstanceOf(Date);

    expect(await auditStates(name)).toEqual({
      [ids.discard ?? '']: 'dead',
      [ids.fail ?? '']: 'dead',
      [ids.expired ?? '']: 'dead',
      [ids.orphan ?? '']: 'dead',
      [ids.ok ?? '']: 'done',
    });
    const { rows: letters } = await t.pool.query<{ delivery_id: string }>(
      'SELECT delivery_id::text FROM outbox.dead_letters WHERE subscription = $1 ORDER BY delivery_id',
      [name],
    );
    expect(letters.map((l) => l.delivery_id)).toEqual([...deadRows.values()].map((r) => r.id).sort());
    expect((await relay.deadLetters(name)).map((l) => l.deliveryId)).toEqual(
      expect.arrayContaining([deliveryIds.discard, deliveryIds.fail, deliveryIds.expired]),
    );
    expect((await relay.status()).subscriptions.find((s) => s.name === name)).toMatchObject({
      pending: 0,
      inFlight: 0,
      dead: 4,
    });
    expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries')).toBe(0);
    await relay.stop();
  });

  it('cancels into completed_deliveries with outcome cancelled, leaving deliveries empty: by cancel() at once, and at claim when a consumer held the delivery', async () => {
    const name = 'cancel-moves';
    const { relay, messageIds: ids, deliveryIds } = await relayed(name, ['cancelled', 'held', 'ok']);
    expect(await relay.cancel(t.pool, ids.cancelled ?? '')).toEqual({ cancelled: 1 });
    expect(await pendingOf(name)).toBe(2);
    // What cancel() leaves when a consumer held the delivery under a live lease: the cancellation, and the
    // delivery, which the next claim of it drops.
    await t.pool.query('INSERT INTO outbox.cancellations (message_id) VALUES ($1)', [ids.held]);

    expect(await consume(name, (_, seen) => seen.includes('ok'))).toEqual(['ok']);

    const completed = await rowsOf<{ id: string; outcome: string }>(
      'completed_deliveries',
      name,
      'x.id::text AS id, x.outcome',
    );
    expect(Object.fromEntries(completed)).toEqual({
      [ids.cancelled ?? '']: { message_id: ids.cancelled, id: deliveryIds.cancelled, outcome: 'cancelled' },
      [ids.held ?? '']: { message_id: ids.held, id: deliveryIds.held, outcome: 'cancelled' },
      [ids.ok ?? '']: { message_id: ids.ok, id: deliveryIds.ok, outcome: 'done' },
    });
    expect(await auditStates(name)).toEqual({
      [ids.cancelled ?? '']: 'cancelled',
      [ids.held ?? '']: 'cancelled',
      [ids.ok ?? '']: 'done',
    });
    expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries')).toBe(0);
    await relay.stop();
  });
});
