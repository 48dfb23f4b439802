import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, OutboxMessage } from '../../src/index.js';
import { outlastLease } from '../helpers/leases.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { createEffectsTable, deliveriesOf, killChildren, spawnConsumer } from './child.js';

const LEASE_MS = 1_000;
const LEASE_EXPIRED = /^lease expired/;

interface AuditRow {
  state: string;
  attempt: number;
  last_error: string | null;
  completed_at: Date | null;
}

describe('a consumer killed mid-handler', () => {
  let t: OutboxTestContext;
  let relay: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    await createEffectsTable(t.pool);
    relay = t.outbox();
    await relay.start();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  async function publishAll(topic: string, n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i += 1) ids.push((await relay.publish(t.pool, topic, { n: i })).id);
    return ids;
  }

  /** A second consumer of the subscription in this process; it records what it handles. */
  async function takeOver(name: string, topic: string, mode: 'lease' | 'transactional') {
    const seen: OutboxMessage[] = [];
    const outbox = t.outbox({ relay: { enabled: false } });
    const options = { topics: [topic], leaseMs: LEASE_MS, pollIntervalMs: 200 };
    if (mode === 'lease') {
      outbox.subscribe(name, options, (m) => {
        seen.push(m);
      });
    } else {
      outbox.subscribe(name, { ...options, mode }, async (m, ctx) => {
        await ctx.tx.query(
          'INSERT INTO chaos_effects (subscription, message_id, attempt) VALUES ($1, $2, $3)',
          [name, m.id, m.attempt],
        );
        seen.push(m);
      });
    }
    await outbox.start();
    return { outbox, seen };
  }

  it('redelivers every message whose lease-mode consumer was SIGKILLed mid-handler', async () => {
    const name = 'lease_kill';
    await relay.declareSubscription(name, { topics: ['kill.lease'] });
    const ids = await publishAll('kill.lease', 5);
    const child = spawnConsumer({
      url: t.db.url,
      relay: false,
      subscriptions: [
        {
          name,
          topics: ['kill.lease'],
          mode: 'lease',
          behavior: 'block',
          leaseMs: LEASE_MS,
          concurrency: 10,
        },
      ],
    });
    await child.waitForEvents('all handlers started in the child', (e) => e.event === 'started', ids.length);

    expect(await child.kill('SIGKILL')).toEqual({ code: null, signal: 'SIGKILL' });
    const second = await takeOver(name, 'kill.lease', 'lease');
    await waitFor('every delivery done', async () =>
      (await deliveriesOf(t.pool, name)).every((d) => d.state === 'done'),
    );

    const rows = await deliveriesOf(t.pool, name);
    expect(rows.map((r) => r.message_id)).toEqual(ids);
    for (const row of rows) {
      expect(row).toMatchObject({ state: 'done', attempt: 2 });
      expect(row.last_error).toMatch(LEASE_EXPIRED);
    }
    expect(second.seen.map((m) => [m.id, m.attempt]).sort()).toEqual(ids.map((id) => [id, 2]).sort());
    await second.outbox.stop();
  });

  const rowSql = `SELECT state, attempt, last_error, completed_at FROM outbox.message_deliveries WHERE message_id = $1`;

  /** The row after the second consumer's ack: done on the attempt it handled, once, with the lease error. */
  async function ackedRow(id: string, attempt: number | undefined) {
    const { rows } = await t.pool.query<AuditRow>(rowSql, [id]);
    expect(attempt).toBeGreaterThanOrEqual(2);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ state: 'done', attempt });
    expect(rows[0]?.last_error).toMatch(LEASE_EXPIRED);
    expect(rows[0]?.completed_at).toBeInstanceOf(Date);
    return rows;
  }

  it.each(['ack', 'failure'] as const)(
    'keeps the lease of a handler that a graceful stop waits for, so its %s is the one recorded',
    async (late) => {
      const name = `stale_${late}`;
      const topic = `stale.${late}`;
      await relay.declareSubscription(name, { topics: [topic] });
      const first = t.outbox({ relay: { enabled: false }, shutdownTimeoutMs: 30_000 });
      let release = () => {};
      const gate = new Promise<void>((resolve) => (release = resolve));
      const startedFirst: OutboxMessage[] = [];
      first.subscribe(name, { topics: [topic], leaseMs: LEASE_MS, concurrency: 1 }, async (m) => {
        startedFirst.push(m);
        await gate;
        if (late === 'failure') throw new Error('late failure of the first consumer');
      });
      await first.start();
      const { id } = await relay.publish(t.pool, topic, { late });
      await waitFor('first consumer started', () => startedFirst.length === 1);
      // A graceful stop: no more claims, and it waits for the running handler, whose lease it keeps extending.
      const stopping = first.stop();
      const second = await takeOver(name, topic, 'lease');
      // Three times the lease runs out as it was, and the second consumer claims past the delivery.
      const rounds = await outlastLease(t.pool, startedFirst[0]?.deliveryId ?? '', 3, async (round) => {
        return (await relay.publish(t.pool, topic, { sentinel: round })).id;
      });
      expect(rounds.map((r) => r.attempt)).toEqual([1, 1, 1, 1]);
      const ends = rounds.map((r) => r.leasedUntil.getTime());
      expect(ends).toEqual([...ends].sort((a, b) => a - b));
      expect(new Set(ends).size).toBe(ends.length);
      const sentinels = await waitFor('the second consumer handled the sentinels', () =>
        second.seen.length === 3 ? second.seen.map((m) => m.id) : false,
      );
      expect(second.seen.map((m) => (m.payload as { sentinel: number }).sentinel).sort()).toEqual([1, 2, 3]);

      release();
      await stopping;
      if (late === 'ack') {
        await waitFor(
          'first consumer acked',
          async () => (await deliveriesOf(t.pool, name))[0]?.state === 'done',
        );
        const { rows } = await t.pool.query<AuditRow>(rowSql, [id]);
        expect(rows).toHaveLength(1);
        expect(rows[0]).toMatchObject({ state: 'done', attempt: 1 });
        expect(second.seen.map((m) => m.id)).toEqual(sentinels);
      } else {
        // The failure counted as attempt 1; the retry goes to the consumer that is still running.
        await waitFor('second consumer acked the retry', () => second.seen.length === sentinels.length + 1);
        expect(second.seen.filter((m) => m.id === id).map((m) => [m.id, m.attempt])).toEqual([[id, 2]]);
      }
      expect(startedFirst.map((m) => m.attempt)).toEqual([1]);
      await second.outbox.stop();
    },
  );

  it.each(['ack', 'failure'] as const)(
    'ignores the late %s of a consumer process that was frozen (SIGSTOP) past its lease and then resumed',
    async (late) => {
      const name = `frozen_${late}`;
      const topic = `frozen.${late}`;
      await relay.declareSubscription(name, { topics: [topic] });
      const child = spawnConsumer({
        url: t.db.url,
        relay: false,
        subscriptions: [{ name, topics: [topic], mode: 'lease', behavior: 'wait-signal', leaseMs: LEASE_MS }],
      });
      await child.waitForEvents('child ready', (e) => e.event === 'ready');
      const { id } = await relay.publish(t.pool, topic, { fail: late === 'failure' });
      await child.waitForEvents('the child started the handler', (e) => e.event === 'started');
      child.signal('SIGSTOP');

      const second = await takeOver(name, topic, 'lease');
      await waitFor(
        'second consumer acked',
        async () => (await deliveriesOf(t.pool, name))[0]?.state === 'done',
      );
      const before = await ackedRow(id, second.seen[0]?.attempt);

      child.signal('SIGCONT');
      child.signal('SIGUSR2'); // lets the frozen handler finish: its outcome reaches the database late
      await child.waitForEvents('the child found its outcome fenced off', (e) =>
        (e.message ?? '').includes('outcome not recorded'),
      );
      expect((await t.pool.query(rowSql, [id])).rows).toEqual(before);
      expect(child.events.filter((e) => e.event === 'started').map((e) => e.attempt)).toEqual([1]);
      expect(await child.kill('SIGTERM')).toEqual({ code: 0, signal: null });
      await second.outbox.stop();
    },
  );

  it('rolls back the side effects of a transactional handler that was SIGKILLed, so each lands once', async () => {
    const name = 'tx_kill';
    await relay.declareSubscription(name, { topics: ['kill.tx'] });
    const ids = await publishAll('kill.tx', 3);
    const child = spawnConsumer({
      url: t.db.url,
      relay: false,
      subscriptions: [
        {
          name,
          topics: ['kill.tx'],
          mode: 'transactional',
          behavior: 'block',
          leaseMs: LEASE_MS,
          concurrency: 10,
        },
      ],
    });
    await child.waitForEvents('all handlers wrote and blocked', (e) => e.event === 'started', ids.length);
    const effectsSql = 'SELECT count(*) AS n FROM chaos_effects WHERE subscription = $1';
    // Written, but inside the open handler transactions: not visible yet.
    expect(await count(t.pool, effectsSql, [name])).toBe(0);

    await child.kill('SIGKILL');
    const second = await takeOver(name, 'kill.tx', 'transactional');
    await waitFor('every delivery done', async () =>
      (await deliveriesOf(t.pool, name)).every((d) => d.state === 'done'),
    );

    const { rows } = await t.pool.query<{ message_id: string; attempt: number }>(
      'SELECT message_id::text, attempt FROM chaos_effects e WHERE subscription = $1 ORDER BY e.message_id',
      [name],
    );
    expect(rows).toEqual(ids.map((id) => ({ message_id: id, attempt: 2 })));
    for (const row of await deliveriesOf(t.pool, name))
      expect(row).toMatchObject({ state: 'done', attempt: 2 });
    expect(second.seen).toHaveLength(ids.length);
    await second.outbox.stop();
  });
});
