import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { count, doneCount, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/*
 * Claims are sized by how fast a consumer's handlers finish (src/consumer/claim-size.ts): at the default batchSize
 * of 1,000, a consumer whose handlers hang must still take only a refill of its slots, leaving the rest to a
 * consumer that can start it.
 */
describe('claim sizing', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('leaves the work a hung consumer cannot start to another consumer, at the default batchSize', async () => {
    const total = 100;
    const handled = new Map<string, number>();
    const note = (id: string): void => {
      handled.set(id, (handled.get(id) ?? 0) + 1);
    };
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let started = 0;
    const hung = t.outbox({ relay: { enabled: true } });
    hung.subscribe('sizing', { topics: ['sizing.test'], concurrency: 2, pollIntervalMs: 20 }, async (m) => {
      started++;
      await gate;
      note(m.id);
    });
    await hung.start();
    await hung.publishMany(
      t.pool,
      Array.from({ length: total }, (_, i) => ({ topic: 'sizing.test', payload: { i } })),
    );
    const leased = () =>
      count(
        t.pool,
        `SELECT count(*) AS n FROM outbox.audit_deliveries WHERE subscription = 'sizing' AND status = 'in_flight'`,
      );
    await waitFor('both slots of the hung consumer busy', () => started === 2);
    // Two running, and one queued per slot: its handlers have finished nothing, so it claims no more.
    await waitFor('the hung consumer holding its refill', async () => (await leased()) === 4);

    const quick = t.outbox({ relay: { enabled: false } });
    quick.subscribe('sizing', { topics: ['sizing.test'], concurrency: 2, pollIntervalMs: 20 }, (m) =>
      note(m.id),
    );
    await quick.start();
    try {
      await waitFor(
        'the other consumer handling the rest',
        async () => (await doneCount(t.pool, 'sizing')) === total - 4,
      );
      expect(await leased()).toBe(4);
      expect(started).toBe(2);
      release();
      await waitFor('every delivery done', async () => (await doneCount(t.pool, 'sizing')) === total);
      expect(handled.size).toBe(total);
      expect([...handled.values()].every((n) => n === 1)).toBe(true);
    } finally {
      release();
      await quick.stop();
      await hung.stop();
    }
  });
});
