import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isOutboxError, type Outbox } from '../../src/index.js';
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

  const dbNow = async () =>
    (await t.pool.query<{ now: Date }>('SELECT clock_timestamp() AS now')).rows[0]?.now;
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
    await waitFor('all handled', () => seen.length === 30);
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
});
