import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pgExecutor } from '../../src/db/executor.js';
import { schemaName } from '../../src/db/identifiers.js';
import { isOutboxError, type Outbox } from '../../src/index.js';
import { selectReplayRange } from '../../src/sql/replay.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// replay(name, { since }): every retained message of the subscription's topics published since T is delivered to
// that subscription again, and to no other; in bounded, resumable steps; never twice at once; not past retention.

describe('replay from a point in time', () => {
  let t: OutboxTestContext;
  const running: Outbox[] = [];

  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((o) => o.stop()));
  });
  afterAll(async () => t.close());

  /**
   * A time after every message published so far and before every one published next. A Date holds whole
   * milliseconds and Postgres microseconds, so it is the next whole millisecond, once the server's clock has passed it.
   */
  const dbNow = async () =>
    (
      await t.pool.query<{ now: Date }>(
        `SELECT x.t AS now
         FROM (SELECT date_trunc('milliseconds', clock_timestamp()) + interval '1 millisecond' AS t) x,
              LATERAL pg_sleep(greatest(0, extract(epoch FROM x.t - clock_timestamp())::float8))`,
      )
    ).rows[0]?.now;
  const fast = { retry: { minDelayMs: 0, maxDelayMs: 0 }, pollIntervalMs: 20 };

  /** Two subscriptions on their own topics, each recording what it handled; everything published is done. */
  async function history(prefix: string) {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    const handled = { a: [] as string[], b: [] as string[] };
    await outbox.declareSubscription(`${prefix}-a`, { topics: [`${prefix}.paid`] });
    await outbox.declareSubscription(`${prefix}-b`, { topics: [`${prefix}.paid`, `${prefix}.other`] });
    outbox.subscribe(`${prefix}-a`, { topics: [`${prefix}.paid`], ...fast }, (m) => {
      handled.a.push(m.id);
    });
    outbox.subscribe(`${prefix}-b`, { topics: [`${prefix}.paid`, `${prefix}.other`], ...fast }, (m) => {
      handled.b.push(m.id);
    });
    const publish = async (n: number, topic: string) =>
      (
        await outbox.publishMany(
          t.pool,
          Array.from({ length: n }, (_, i) => ({
            topic: `${prefix}.${topic}`,
            payload: { i },
            key: `k${i % 3}`,
          })),
        )
      ).map((r) => r.id);
    const before = await publish(10, 'paid');
    const since = await dbNow();
    const after = [...(await publish(7, 'paid')), ...(await publish(5, 'other'))];
    await outbox.start();
    await waitFor('everything handled once', () => handled.a.length === 17 && handled.b.length === 22);
    // Handled is not yet acked (lease-mode acks are written in batches), and a replay skips a delivery still in
    // flight: wait until the database shows all 39 done, in one snapshot.
    await waitFor('everything acked', async () => {
      const { rows } = await t.pool.query<{ done: string; all: string }>(
        `SELECT count(*) FILTER (WHERE status = 'done') AS done, count(*) AS all
         FROM outbox.audit_deliveries WHERE subscription = ANY ($1::text[])`,
        [[`${prefix}-a`, `${prefix}-b`]],
      );
      return rows[0]?.done === '39' && rows[0].all === '39';
    });
    return { outbox, handled, before, since: since ?? new Date(), after, paidAfter: after.slice(0, 7) };
  }

  it('delivers exactly the messages published since T again, to that subscription only', async () => {
    const h = await history('rt1');
    h.handled.a.length = 0;
    h.handled.b.length = 0;
    expect(await h.outbox.replay('rt1-a', { since: h.since })).toEqual({ replayed: 7, next: null });
    await waitFor('the replayed messages handled', () => h.handled.a.length === 7);
    // A later message of another subscription's flows through the relay: nothing more reaches b than that.
    const [marker] = await h.outbox.publishMany(t.pool, [{ topic: 'rt1.other', payload: {} }]);
    await waitFor('the marker reached b', () => h.handled.b.includes(marker?.id ?? ''));
    expect([...h.handled.a].sort()).toEqual([...h.paidAfter].sort());
    expect(h.handled.b).toEqual([marker?.id]);
  });

  it('goes in bounded steps and resumes from next, replaying each message once', async () => {
    const h = await history('rt2');
    h.handled.a.length = 0;
    const first = await h.outbox.replay('rt2-a', { since: h.since, limit: 3 });
    expect(first.replayed).toBe(3);
    expect(first.next).not.toBeNull();
    const rest = await h.outbox.replay('rt2-a', { since: h.since, after: first.next ?? undefined });
    expect(rest).toEqual({ replayed: 4, next: null });
    await waitFor('the replayed messages handled', () => h.handled.a.length === 7);
    expect([...h.handled.a].sort()).toEqual([...h.paidAfter].sort());
  });

  it('keeps per-key order in an ordered subscription', async () => {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    await outbox.declareSubscription('rt3', { topics: ['rt3.paid'], ordered: true });
    const since = await dbNow();
    const ids = (
      await outbox.publishMany(
        t.pool,
        Array.from({ length: 30 }, (_, i) => ({ topic: 'rt3.paid', payload: { i }, key: `k${i % 3}` })),
      )
    ).map((r) => r.id);
    const seen: { id: string; key: string | null }[] = [];
    outbox.subscribe('rt3', { topics: ['rt3.paid'], concurrency: 5, ...fast }, (m) => {
      seen.push({ id: m.id, key: m.key });
    });
    await outbox.start();
    await waitFor('all handled and acked', async () => seen.length === 30 && (await unfinished('rt3')) === 0);
    seen.length = 0;
    expect(await outbox.replay('rt3', { since: since ?? new Date() })).toEqual({ replayed: 30, next: null });
    await waitFor('all handled again', () => seen.length === 30);
    for (const key of ['k0', 'k1', 'k2']) {
      const order = seen.filter((s) => s.key === key).map((s) => s.id);
      expect(order).toEqual(ids.filter((_, i) => `k${i % 3}` === key));
    }
  });

  it('skips a message still pending and turns a dead letter into the new delivery', async () => {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    await outbox.declareSubscription('rt4', { topics: ['rt4.paid'] });
    const since = (await dbNow()) ?? new Date();
    const [dies, waits] = await outbox.publishMany(t.pool, [
      { topic: 'rt4.paid', payload: { dies: true } },
      { topic: 'rt4.paid', payload: { dies: false }, delayMs: 3_600_000 },
    ]);
    outbox.subscribe('rt4', { topics: ['rt4.paid'], maxAttempts: 1, ...fast }, () => {
      throw new Error('always fails');
    });
    await outbox.start();
    await waitFor('the first one dead', async () => (await outbox.deadLetters('rt4')).length === 1);
    await outbox.stop();
    expect(await outbox.replay('rt4', { since })).toEqual({ replayed: 1, next: null });
    expect(await outbox.deadLetters('rt4')).toEqual([]);
    const statuses = async (id: string | undefined) =>
      (
        await t.pool.query<{ status: string }>(
          `SELECT status FROM outbox.audit_deliveries WHERE message_id = $1::bigint AND subscription = 'rt4'`,
          [id],
        )
      ).rows.map((r) => r.status);
    expect(await statuses(dies?.id)).toEqual(['pending']);
    expect(await statuses(waits?.id)).toEqual(['delayed']);
  });

  it('rejects bad input and an unknown subscription before queuing anything', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('rt5', { topics: ['rt5.paid'] });
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: unknown) => (isOutboxError(e) ? e.code : String(e)),
      );
    expect(await code(outbox.replay('nobody', { since: new Date() }))).toBe('OUTBOX_UNKNOWN_SUBSCRIPTION');
    expect(await code(outbox.replay('rt5', { since: new Date('nope') }))).toBe('OUTBOX_INVALID_OPTION');
    expect(await code(outbox.replay('rt5', { since: '2026-01-01' as unknown as Date }))).toBe(
      'OUTBOX_INVALID_OPTION',
    );
    expect(await code(outbox.replay('rt5', { since: new Date(), ids: ['1'] }))).toBe('OUTBOX_INVALID_OPTION');
    expect(await code(outbox.replay('rt5', { since: new Date(), limit: 0 }))).toBe('OUTBOX_INVALID_OPTION');
    expect(await code(outbox.replay('rt5', { after: '5' }))).toBe('OUTBOX_INVALID_OPTION');
    // `after` is an earlier call's `next` (or a bare message id): anything else is refused.
    for (const after of ['', 'x', '5:', '5:9', '5:9:', '5:9:x', '9:5:0', '5:9:0:1', '0:9:0', '-5', 5]) {
      expect(await code(outbox.replay('rt5', { since: new Date(), after: after as string }))).toBe(
        'OUTBOX_INVALID_OPTION',
      );
    }
    expect(await outbox.replay('rt5', { since: new Date(), after: '5' })).toEqual({
      replayed: 0,
      next: null,
    });
    expect(await outbox.replay('rt5', { since: new Date(), after: '5:9:0' })).toEqual({
      replayed: 0,
      next: null,
    });
  });

  it('refuses a time before messages that retention removed, and says so', async () => {
    const h = await history('rt6');
    await h.outbox.stop();
    await t.pool.query(
      `UPDATE outbox.messages SET created_at = created_at - interval '8 days' WHERE id = ANY ($1::bigint[])`,
      [h.before],
    );
    const removed = await t.outbox().purge();
    expect(removed.messages).toBeGreaterThanOrEqual(10);
    const error = await t
      .outbox()
      .replay('rt6-a', { since: new Date(Date.now() - 30 * 86_400_000) })
      .catch((e: unknown) => e);
    expect(isOutboxError(error, 'OUTBOX_REPLAY_BEYOND_RETENTION')).toBe(true);
    expect(String((error as Error).message)).toMatch(/retention has removed messages published up to/);
    // From T on nothing was removed: that replay runs.
    expect(await t.outbox().replay('rt6-a', { since: h.since })).toEqual({ replayed: 7, next: null });
    expect(
      await count(
        t.pool,
        `SELECT count(*) AS n FROM outbox.deliveries d JOIN outbox.subscriptions s ON s.id = d.subscription_id
         WHERE s.name = 'rt6-a'`,
      ),
    ).toBe(7);
  });

  /** Deliveries of a subscription that are not finished (pending, delayed, in flight). */
  const unfinished = (subscription: string) =>
    count(
      t.pool,
      `SELECT count(*) AS n FROM outbox.deliveries d JOIN outbox.subscriptions s ON s.id = d.subscription_id
       WHERE s.name = $1::text`,
      [subscription],
    );
  const exists = async (ids: (string | undefined)[]) =>
    count(t.pool, `SELECT count(*) AS n FROM outbox.messages WHERE id = ANY ($1::bigint[])`, [ids]);

  it('replays a dead letter that stopped its key (blockKeyOnDead) ahead of the key it held back', async () => {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    await outbox.declareSubscription('rt7', { topics: ['rt7.paid'], ordered: true, blockKeyOnDead: true });
    const since = (await dbNow()) ?? new Date();
    const [first] = await outbox.publishMany(t.pool, [{ topic: 'rt7.paid', payload: { n: 1 }, key: 'K' }]);
    const [second] = await outbox.publishMany(t.pool, [{ topic: 'rt7.paid', payload: { n: 2 }, key: 'K' }]);
    let failing = true;
    const handled: string[] = [];
    outbox.subscribe('rt7', { topics: ['rt7.paid'], maxAttempts: 1, ...fast }, (m) => {
      if (failing) throw new Error('fails until it is fixed');
      handled.push(m.id);
    });
    await outbox.start();
    await waitFor('the first dead, the second held back behind it', async () => {
      const dead = await outbox.deadLetters('rt7');
      const waiting = await count(
        t.pool,
        `SELECT count(*) AS n FROM outbox.audit_deliveries
         WHERE subscription = 'rt7' AND message_id = $1::bigint AND status = 'pending' AND attempts = 0`,
        [second?.id],
      );
      return dead.length === 1 && dead[0]?.messageId === first?.id && waiting === 1;
    });
    failing = false;
    // The second is pending, so only the dead one is queued; it goes first again, as the key's order says.
    expect(await outbox.replay('rt7', { since })).toEqual({ replayed: 1, next: null });
    await waitFor('both handled', () => handled.length === 2);
    expect(handled).toEqual([first?.id, second?.id]);
  });

  it('goes on from next only up to the newest message when the replay began', async () => {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    await outbox.declareSubscription('rt8', { topics: ['rt8.paid'] });
    const handled: string[] = [];
    outbox.subscribe('rt8', { topics: ['rt8.paid'], ...fast }, (m) => {
      handled.push(m.id);
    });
    const publish = async (n: number) =>
      (
        await outbox.publishMany(
          t.pool,
          Array.from({ length: n }, (_, i) => ({ topic: 'rt8.paid', payload: { i } })),
        )
      ).map((r) => r.id);
    const since = (await dbNow()) ?? new Date();
    const old = await publish(5);
    await outbox.start();
    await waitFor(
      'the first ones handled',
      async () => handled.length === 5 && (await unfinished('rt8')) === 0,
    );
    handled.length = 0;
    const first = await outbox.replay('rt8', { since, limit: 2 });
    expect(first.replayed).toBe(2);
    expect(typeof first.next).toBe('string');
    // Published after the replay began: the relay delivers them, and they are done before the replay goes on.
    const fresh = await publish(3);
    await waitFor(
      'the new ones handled and finished',
      async () => fresh.every((id) => handled.includes(id)) && (await unfinished('rt8')) === 0,
    );
    const rest = await outbox.replay('rt8', { since, after: first.next ?? undefined });
    expect(rest).toEqual({ replayed: 3, next: null });
    await waitFor('the rest handled', async () => handled.length === 8 && (await unfinished('rt8')) === 0);
    expect([...handled].sort()).toEqual([...old, ...fresh].sort());
  });

  /**
   * A subscription `name` on `<name>.early` and `<name>.late`, everything published handled: three early messages
   * (one transaction each), then three late ones published after them. With `hold`, a second subscription without a
   * consumer keeps the late ones pending, so retention cannot remove them.
   */
  async function earlyAndLate(name: string, hold: boolean) {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    const topics = [`${name}.early`, `${name}.late`];
    await outbox.declareSubscription(name, { topics });
    if (hold) await outbox.declareSubscription(`${name}-hold`, { topics: [`${name}.late`] });
    const handled: string[] = [];
    outbox.subscribe(name, { topics, ...fast }, (m) => {
      handled.push(m.id);
    });
    const since = (await dbNow()) ?? new Date();
    const early: (string | undefined)[] = [];
    for (let i = 0; i < 3; i++) {
      early.push((await outbox.publish(t.pool, `${name}.early`, { i })).id);
    }
    await dbNow(); // the late ones are published a millisecond later at least
    const late = (
      await outbox.publishMany(
        t.pool,
        Array.from({ length: 3 }, (_, i) => ({ topic: `${name}.late`, payload: { i } })),
      )
    ).map((r) => r.id);
    await outbox.start();
    await waitFor('everything handled', async () => handled.length === 6 && (await unfinished(name)) === 0);
    handled.length = 0;
    return { outbox, handled, since, early, late };
  }

  it('goes on from next after retention removed only messages the replay had looked at', async () => {
    const h = await earlyAndLate('rt9', true);
    const first = await h.outbox.replay('rt9', { since: h.since, limit: 3 });
    expect(first.replayed).toBe(3);
    await waitFor('the early ones handled again', async () => (await unfinished('rt9')) === 0);
    const removed = await t.outbox({ retentionMs: 1 }).purge();
    expect(removed.messages).toBeGreaterThanOrEqual(3);
    expect(await exists(h.early)).toBe(0);
    expect(await exists(h.late)).toBe(3);
    const rest = await h.outbox.replay('rt9', { since: h.since, after: first.next ?? undefined });
    expect(rest).toEqual({ replayed: 3, next: null });
    await waitFor('the late ones handled again', () => h.handled.length === 6);
    expect([...h.handled].sort()).toEqual([...h.early, ...h.late].sort());
  });

  it('refuses to go on from next once retention removed messages the replay still needed', async () => {
    const h = await earlyAndLate('rt10', false);
    const first = await h.outbox.replay('rt10', { since: h.since, limit: 3 });
    expect(first.replayed).toBe(3);
    await waitFor('the early ones handled again', async () => (await unfinished('rt10')) === 0);
    await t.outbox({ retentionMs: 1 }).purge();
    expect(await exists([...h.early, ...h.late])).toBe(0);
    const error = await h.outbox
      .replay('rt10', { since: h.since, after: first.next ?? undefined })
      .catch((e: unknown) => e);
    expect(isOutboxError(error, 'OUTBOX_REPLAY_BEYOND_RETENTION')).toBe(true);
    expect(String((error as Error).message)).toMatch(/retention has removed messages published up to/);
  });

  it('stops between two batches of one call when retention removed what the second needed', async () => {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    running.push(outbox);
    await outbox.declareSubscription('rt11', { topics: ['rt11.paid'] });
    let handled = 0;
    outbox.subscribe('rt11', { topics: ['rt11.paid'], batchSize: 500, concurrency: 50, ...fast }, () => {
      handled += 1;
    });
    const since = (await dbNow()) ?? new Date();
    await outbox.publishMany(
      t.pool,
      Array.from({ length: 1_500 }, (_, i) => ({ topic: 'rt11.paid', payload: { i } })),
    );
    await outbox.start();
    await waitFor('all handled', async () => handled === 1_500 && (await unfinished('rt11')) === 0);
    // Nothing else takes the delivery-ids lock from here on, and the first batch's replays stay pending.
    await outbox.stop();
    // The lock queue orders what follows: this transaction holds the lock shared (as retention does), the replay's
    // first batch waits for it exclusive, then retention's delete waits behind the replay. Released, the first
    // batch runs, then retention deletes (its shared lock was asked for before the second batch's), then the
    // second batch runs.
    const lockKey = `1870000002, (SELECT (oid::bigint - 2147483648)::int FROM pg_namespace WHERE nspname = 'outbox')`;
    const waiting = () =>
      count(
        t.pool,
        `SELECT count(*) AS n FROM pg_locks
         WHERE locktype = 'advisory' AND NOT granted AND classid = '1870000002'::oid
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      );
    const holder = await t.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT pg_advisory_xact_lock_shared(${lockKey})`);
      const replaying = t
        .outbox()
        .replay('rt11', { since })
        .catch((e: unknown) => e);
      await waitFor('the first batch waiting', async () => (await waiting()) === 1);
      const purging = t.outbox({ retentionMs: 1 }).purge();
      await waitFor('retention waiting behind it', async () => (await waiting()) === 2);
      await holder.query('COMMIT');
      const [outcome, removed] = await Promise.all([replaying, purging]);
      expect(removed.messages).toBeGreaterThanOrEqual(500);
      expect(isOutboxError(outcome, 'OUTBOX_REPLAY_BEYOND_RETENTION')).toBe(true);
      expect(String((outcome as Error).message)).toMatch(/Cannot go on with the replay/);
    } finally {
      holder.release();
    }
    // The first batch's 1,000 stay queued (and kept their messages); the second queued nothing.
    expect(await unfinished('rt11')).toBe(1_000);
  });

  it('finds where a replay from T starts from either side of the table, also where publish times skip back', async () => {
    await t.pool.query('CREATE SCHEMA rt_range');
    await t.pool.query(
      'CREATE TABLE rt_range.messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, created_at timestamptz NOT NULL)',
    );
    await t.pool.query('CREATE INDEX ON rt_range.messages USING brin (created_at)');
    const range = (since: Date) => selectReplayRange(pgExecutor(t.pool), schemaName('rt_range'), since);
    expect(await range(new Date())).toEqual({ firstId: null, lastId: null });
    // 3,000 messages published a second apart in id order, but for id 700, published late, and id 2,500, early.
    const t0 = Date.parse('2026-01-01T00:00:00Z');
    const second = (id: number) => (id === 700 ? 4_300 : id === 2_500 ? -1_100 : id);
    await t.pool.query(
      `INSERT INTO rt_range.messages (created_at)
       SELECT $1::timestamptz + g * interval '1 second' FROM generate_series(1, 3000) g`,
      [new Date(t0)],
    );
    await t.pool.query(
      `UPDATE rt_range.messages SET created_at = $1::timestamptz + (CASE id WHEN 700 THEN 4300 ELSE -1100 END)
         * interval '1 second' WHERE id IN (700, 2500)`,
      [new Date(t0)],
    );
    const ids = Array.from({ length: 3_000 }, (_, i) => i + 1);
    for (const s of [
      -5_000, 0.5, 10.5, 650.5, 699.5, 700.5, 1_500.5, 2_499.5, 2_500.5, 2_990.5, 3_000.5, 4_300.5,
    ]) {
      const first = ids.find((id) => second(id) >= s);
      expect(await range(new Date(t0 + s * 1_000)), `since T0 + ${s} s`).toEqual({
        firstId: first === undefined ? null : String(first),
        lastId: '3000',
      });
    }
    await t.pool.query('DROP SCHEMA rt_range CASCADE');
  });
});
