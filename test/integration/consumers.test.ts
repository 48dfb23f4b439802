import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox, discard, retryAfter, type Outbox, type OutboxMessage } from '../../src/index.js';
import { outlastLease } from '../helpers/leases.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const states = async (t: OutboxTestContext, subscription: string) => {
  const { rows } = await t.pool.query<{ state: string; n: string }>(
    `SELECT state, count(*) AS n FROM outbox.message_deliveries WHERE subscription = $1 GROUP BY state`,
    [subscription],
  );
  return Object.fromEntries(rows.map((r) => [r.state, Number(r.n)]));
};

describe('consumers', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 40 });
  });
  afterAll(async () => t.close());

  it('hands each message to exactly one of several competing consumers', async () => {
    const handled = new Map<string, number>();
    const byInstance = [0, 0, 0, 0];
    const instances: Outbox[] = byInstance.map((_, i) => {
      const o = t.outbox({ relay: { enabled: i === 0 } });
      o.subscribe('compete', { topics: ['compete.test'], batchSize: 20, concurrency: 4 }, async (m) => {
        handled.set(m.id, (handled.get(m.id) ?? 0) + 1);
        byInstance[i] = (byInstance[i] ?? 0) + 1;
        await new Promise((r) => setTimeout(r, Math.random() * 2));
      });
      return o;
    });
    await Promise.all(instances.map((o) => o.start()));
    const total = 2000;
    const producer = instances[0] as Outbox;
    for (let i = 0; i < total; i += 100) {
      await producer.publishMany(
        t.pool,
        Array.from({ length: 100 }, (_, j) => ({ topic: 'compete.test', payload: { n: i + j } })),
      );
    }
    await waitFor('all handled', () => handled.size === total, 30_000);
    await waitFor('all acked', async () => (await states(t, 'compete')).done === total);
    expect([...handled.values()].every((n) => n === 1)).toBe(true);
    expect(byInstance.filter((n) => n > 0).length).toBeGreaterThan(1);
    await Promise.all(instances.map((o) => o.stop()));
  });

  it('retries with backoff, dead-letters after maxAttempts, and replays dead letters', async () => {
    const outbox = t.outbox();
    const attempts: number[] = [];
    let healthy = false;
    outbox.subscribe(
      'flaky',
      { topics: ['flaky.test'], maxAttempts: 3, retry: { minDelayMs: 40, maxDelayMs: 200 } },
      (m) => {
        attempts.push(m.attempt);
        if (!healthy) throw new Error(`boom on attempt ${m.attempt}`);
      },
    );
    const dead: string[] = [];
    outbox.on('delivery:dead', (info) => dead.push(info.deliveryId));
    await outbox.start();
    const { id } = await outbox.publish(t.pool, 'flaky.test', { x: 1 });
    await waitFor('dead-lettered', () => dead.length === 1);
    expect(attempts).toEqual([1, 2, 3]);
    const letters = await outbox.deadLetters('flaky');
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({ messageId: id, attempt: 3, topic: 'flaky.test', payload: { x: 1 } });
    expect(letters[0]?.lastError).toContain('boom on attempt 3');
    // The backoff was taken from Postgres's clock: each retry came after its delay.
    const { rows } = await t.pool.query<{ spread_ms: number }>(
      `SELECT EXTRACT(EPOCH FROM dead_at - created_at) * 1000 AS spread_ms FROM outbox.dead_deliveries WHERE message_id = $1`,
      [id],
    );
    expect(Number(rows[0]?.spread_ms)).toBeGreaterThanOrEqual(20 + 40);

    healthy = true;
    expect(await outbox.replay('flaky')).toEqual({ replayed: 1 });
    await waitFor('replayed delivery done', async () => (await states(t, 'flaky')).done === 1);
    expect(attempts).toEqual([1, 2, 3, 1]);
    expect(await outbox.deadLetters('flaky')).toEqual([]);
    await outbox.stop();
  });

  it('honours retryAfter() and discard() thrown by a handler', async () => {
    const outbox = t.outbox();
    const seen: string[] = [];
    outbox.subscribe('control', { topics: ['control.test'], maxAttempts: 5 }, (m) => {
      const kind = (m.payload as { kind: string }).kind;
      seen.push(`${kind}:${m.attempt}`);
      if (kind === 'discard') throw discard('not for us');
      if (kind === 'later' && m.attempt === 1) throw retryAfter(30);
    });
    await outbox.start();
    await outbox.publish(t.pool, 'control.test', { kind: 'discard' });
    await outbox.publish(t.pool, 'control.test', { kind: 'later' });
    await waitFor('both settled', async () => {
      const s = await states(t, 'control');
      return s.dead === 1 && s.done === 1;
    });
    expect(seen.sort()).toEqual(['discard:1', 'later:1', 'later:2']);
    await outbox.stop();
  });

  it('never hands out a delayed message before its due time', async () => {
    const outbox = t.outbox();
    const early: string[] = [];
    const handled: string[] = [];
    outbox.subscribe('delayed', { topics: ['delayed.test'] }, async (m) => {
      const { rows } = await t.pool.query<{ early: boolean }>('SELECT now() < $1::timestamptz AS early', [
        m.deliverAt,
      ]);
      if (rows[0]?.early) early.push(m.id);
      handled.push(m.id);
    });
    await outbox.start();
    const client = await t.pool.connect();
    const { rows } = await client.query<{ now: Date }>('SELECT now() AS now');
    const base = (rows[0] as { now: Date }).now.getTime();
    const published = [];
    for (let i = 0; i < 20; i++) {
      published.push(await outbox.publish(client, 'delayed.test', { i }, { delayMs: 50 + i * 15 }));
    }
    published.push(
      await outbox.publish(client, 'delayed.test', { abs: true }, { deliverAt: new Date(base + 400) }),
    );
    client.release();
    await waitFor('all delayed messages handled', () => handled.length === published.length);
    expect(early).toEqual([]);
    await outbox.stop();
  });

  it('commits handler side effects and the ack together in transactional mode', async () => {
    await t.pool.query('CREATE TABLE IF NOT EXISTS effects (message_id bigint, attempt int)');
    const outbox = t.outbox();
    outbox.subscribe(
      'tx',
      {
        topics: ['tx.test'],
        mode: 'transactional',
        maxAttempts: 2,
        retry: { minDelayMs: 10, maxDelayMs: 20 },
      },
      async (m, ctx) => {
        await ctx.tx.query('INSERT INTO effects VALUES ($1, $2)', [m.id, m.attempt]);
        if ((m.payload as { fail: boolean }).fail) throw new Error('after the side effect');
      },
    );
    await outbox.start();
    const ok = await outbox.publish(t.pool, 'tx.test', { fail: false });
    const bad = await outbox.publish(t.pool, 'tx.test', { fail: true });
    await waitFor('both settled', async () => {
      const s = await states(t, 'tx');
      return s.done === 1 && s.dead === 1;
    });
    expect(await count(t.pool, 'SELECT count(*) AS n FROM effects WHERE message_id = $1', [ok.id])).toBe(1);
    // Both failed attempts rolled their side effect back, and each still counted as an attempt.
    expect(await count(t.pool, 'SELECT count(*) AS n FROM effects WHERE message_id = $1', [bad.id])).toBe(0);
    const letters = await outbox.deadLetters('tx');
    expect(letters[0]).toMatchObject({ messageId: bad.id, attempt: 2 });
    await outbox.stop();
  });

  it('cancels the pending delayed deliveries of a message', async () => {
    const outbox = t.outbox();
    const handled: string[] = [];
    outbox.subscribe('cancel', { topics: ['cancel.test'] }, (m) => {
      handled.push(m.id);
    });
    await outbox.start();
    const later = await outbox.publish(t.pool, 'cancel.test', { close: 1 }, { delayMs: 300 });
    const now = await outbox.publish(t.pool, 'cancel.test', { close: 2 });
    await waitFor(
      'relayed',
      async () =>
        (await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1', [
          later.id,
        ])) === 1,
    );
    expect(await outbox.cancel(t.pool, later.id)).toEqual({ cancelled: 1 });
    // Cancelled before the relay saw it: no delivery is ever made.
    const client = await t.pool.connect();
    await client.query('BEGIN');
    const unborn = await outbox.publish(client, 'cancel.test', { close: 3 }, { delayMs: 100 });
    await outbox.cancel(client, unborn.id);
    await client.query('COMMIT');
    client.release();
    // A message due just after both cancelled ones, published after them: claims take due rows in available_at
    // order and the relay fans out in publish order, so once it has been handled, every claim that could have
    // handed out a cancelled delivery (or one made for the unborn message) has run.
    const { rows } = await t.pool.query<{ due: Date }>(
      'SELECT max(deliver_at) AS due FROM outbox.messages WHERE id = ANY ($1::bigint[])',
      [[later.id, unborn.id]],
    );
    const due = (rows[0] as { due: Date }).due;
    const after = await outbox.publish(
      t.pool,
      'cancel.test',
      { close: 4 },
      // A Date drops the microseconds: one millisecond more is strictly later.
      { deliverAt: new Date(due.getTime() + 1) },
    );
    await waitFor('the message due after the cancelled ones ran', () => handled.includes(after.id));
    expect(handled).toEqual([now.id, after.id]);
    expect(
      await count(t.pool, `SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1`, [unborn.id]),
    ).toBe(0);
    await outbox.stop();
  });

  it('keeps extending the lease of a handler that runs past leaseMs, so no other consumer takes it', async () => {
    const a = t.outbox({ relay: { enabled: true } });
    const b = t.outbox({ relay: { enabled: false } });
    const options = { topics: ['long.test'], leaseMs: 300, pollIntervalMs: 50 };
    const isMarker = (m: OutboxMessage) => (m.payload as { marker?: number }).marker !== undefined;
    let slowDelivery: string | undefined;
    let aborted = false;
    let finish: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (finish = resolve));
    a.subscribe('long', options, async (m, ctx) => {
      if (isMarker(m)) return;
      slowDelivery = m.deliveryId;
      await gate;
      aborted = ctx.signal.aborted;
    });
    const seenByB: string[] = [];
    b.subscribe('long', options, (m) => {
      seenByB.push(m.id);
    });
    await a.start();
    const { id } = await a.publish(t.pool, 'long.test', { slow: true });
    const deliveryId = await waitFor('the slow handler started', () => slowDelivery);
    await b.start();
    // Four leases long, by progress: each round waits until the lease end it started with has passed, then until a
    // claim of a or b took a marker published after it; without extension that claim would have taken the slow
    // delivery, due since its old lease end, first. The markers are quick for both consumers.
    const rounds = await outlastLease(
      t.pool,
      deliveryId,
      4,
      async (round) => (await a.publish(t.pool, 'long.test', { marker: round })).id,
    );
    finish();
    await waitFor('all acked', async () => (await states(t, 'long')).done === 5);
    expect(rounds.map((r) => r.attempt)).toEqual([1, 1, 1, 1, 1]);
    rounds.slice(1).forEach((r, i) => {
      expect(r.leasedUntil.getTime()).toBeGreaterThan(rounds[i]?.leasedUntil.getTime() ?? Infinity);
    });
    expect(seenByB).not.toContain(id);
    expect(aborted).toBe(false);
    const { rows } = await t.pool.query<{ attempt: number }>(
      `SELECT attempt FROM outbox.message_deliveries WHERE message_id = $1`,
      [id],
    );
    expect(rows).toEqual([{ attempt: 1 }]);
    await Promise.all([a.stop(), b.stop()]);
  });

  it('dead-letters a delivery whose message was deleted instead of letting it block the queue', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('orphan', { topics: ['orphan.test'] });
    const gone = await outbox.publish(t.pool, 'orphan.test', { n: 1 });
    await outbox.start();
    await waitFor('relayed', async () => (await states(t, 'orphan')).pending === 1);
    await t.pool.query('DELETE FROM outbox.messages WHERE id = $1', [gone.id]);
    const handled: string[] = [];
    outbox.subscribe('orphan', { topics: ['orphan.test'] }, (m) => {
      handled.push(m.id);
    });
    const kept = await outbox.publish(t.pool, 'orphan.test', { n: 2 });
    await waitFor('the next message is handled', () => handled.includes(kept.id));
    const { rows } = await t.pool.query<{ last_error: string }>(
      'SELECT last_error FROM outbox.dead_deliveries WHERE message_id = $1',
      [gone.id],
    );
    expect(rows).toEqual([{ last_error: 'the message no longer exists in the messages table' }]);
    expect(
      await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1', [gone.id]),
    ).toBe(0);
    expect(handled).toEqual([kept.id]);
    await outbox.stop();
  });

  it('releases claimed but unstarted deliveries on stop without counting an attempt', async () => {
    const outbox = t.outbox({ shutdownTimeoutMs: 5_000 });
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let started = 0;
    outbox.subscribe('stop', { topics: ['stop.test'], batchSize: 10, concurrency: 1 }, async () => {
      started++;
      await gate;
    });
    await outbox.start();
    await outbox.publishMany(
      t.pool,
      Array.from({ length: 10 }, (_, i) => ({ topic: 'stop.test', payload: { i } })),
    );
    await waitFor('first handler running', () => started === 1);
    // With its one slot busy, the consumer keeps one delivery queued ahead (its handler has finished nothing yet,
    // so it claims no more than that): claimed, never started.
    await waitFor(
      'one delivery claimed and queued',
      async () => (await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE attempt = 1')) >= 2,
    );
    const stopping = outbox.stop();
    release();
    await stopping;
    const s = await states(t, 'stop');
    expect(s).toEqual({ done: 1, pending: 9 });
    expect(
      await count(
        t.pool,
        `SELECT count(*) AS n FROM outbox.message_deliveries WHERE subscription = 'stop' AND state = 'pending' AND attempt = 0 AND available_at <= now()`,
      ),
    ).toBe(9);
  });

  it('claims a backlog in full batches, two statements at once, handing each delivery out once', async () => {
    // A pool of its own that records how many claim statements of one subscription run at the same moment, and
    // how many rows each asks for.
    const pool = new pg.Pool({ connectionString: t.db.url, max: 20 });
    const running = new Map<unknown, number>();
    let mostAtOnce = 0;
    const asked: number[] = [];
    const query = pool.query.bind(pool) as (text: string, params?: unknown[]) => Promise<pg.QueryResult>;
    pool.query = (async (text: string, params?: unknown[]) => {
      const subscription =
        typeof text === 'string' && text.startsWith('WITH due AS') ? params?.[0] : undefined;
      const count = (running.get(subscription) ?? 0) + 1;
      running.set(subscription, count);
      if (subscription !== undefined) {
        mostAtOnce = Math.max(mostAtOnce, count);
        asked.push(Number(params?.[1]));
      }
      try {
        return await query(text, params);
      } finally {
        running.set(subscription, (running.get(subscription) ?? 1) - 1);
      }
    }) as typeof pool.query;
    // The backlog is fanned out before the consumer starts, so its first claim fills its limit whatever the relay's
    // pace: the claim after it is split. Both statements are sent in one synchronous step, so the wrapper above
    // counts two at once however long each takes.
    const relay = t.outbox({ consumers: false });
    await relay.declareSubscription('split', { topics: ['split.test'] });
    await relay.start();
    const total = 2000;
    for (let i = 0; i < total; i += 500) {
      await relay.publishMany(
        t.pool,
        Array.from({ length: 500 }, (_, j) => ({ topic: 'split.test', payload: { n: i + j } })),
      );
    }
    await waitFor(
      'the backlog fanned out',
      async () => (await states(t, 'split')).pending === total,
      30_000,
      50,
    );
    await relay.stop();
    const outbox = createOutboxOn(pool);
    const handled = new Map<string, number>();
    outbox.subscribe('split', { topics: ['split.test'], batchSize: 400, concurrency: 50 }, (m) => {
      handled.set(m.id, (handled.get(m.id) ?? 0) + 1);
    });
    await outbox.start();
    try {
      await waitFor(
        'every delivery acked',
        async () => (await states(t, 'split')).done === total,
        30_000,
      ).catch(async (error: unknown) => {
        // What was left, for the failure report: states, the unfinished rows, and which relay holds the lock.
        const { rows } = await t.pool.query(
          `SELECT d.state, d.attempt, d.available_at, d.leased_until, count(*) AS n
             FROM outbox.deliveries d JOIN outbox.subscriptions s ON s.id = d.subscription_id
             WHERE s.name = 'split' GROUP BY 1, 2, 3, 4 ORDER BY 3 LIMIT 20`,
        );
        const { rows: relay } = await t.pool.query(`SELECT version, updated_at FROM outbox.relay_state`);
        console.error('split claim test stalled', {
          states: await states(t, 'split'),
          handled: handled.size,
          left: rows,
          relay,
          leader: outbox.status ? await outbox.status().catch(() => null) : null,
        });
        throw error;
      });
    } finally {
      await outbox.stop();
      await pool.end();
    }
    expect(handled.size).toBe(total);
    expect([...handled.values()].every((n) => n === 1)).toBe(true);
    expect(mostAtOnce).toBeGreaterThanOrEqual(2);
    // Quick handlers free their slots in a burst; a claim sized at the first freed slot would ask for a row or two
    // and hold up the full-size claim behind it (every other claim did, before the loop waited for the burst).
    const small = asked.filter((n) => n < 100);
    expect(small.length, `claims asked for ${asked.join(', ')}`).toBeLessThanOrEqual(asked.length / 10);
  });
});

function createOutboxOn(pool: pg.Pool) {
  return createOutbox({ pool, logger: testLogger, shutdownTimeoutMs: 2_000, relay: { enabled: false } });
}
