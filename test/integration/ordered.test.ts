import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const KEYS = 50;
const PER_KEY = 50;

/** Deterministic pseudo-random numbers, so a failure can be replayed. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

describe('ordered subscriptions', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 40 });
  });
  afterAll(async () => t.close());

  /** Publishes `perKey` messages for each of `keys` keys, interleaved, numbered per key. */
  async function publishKeys(outbox: Outbox, topic: string, keys: number, perKey: number): Promise<void> {
    const batch = [];
    for (let seq = 0; seq < perKey; seq++) {
      for (let k = 0; k < keys; k++)
        batch.push({ topic, key: `key-${k}`, payload: { key: `key-${k}`, seq } });
    }
    for (let i = 0; i < batch.length; i += 500) await outbox.publishMany(t.pool, batch.slice(i, i + 500));
  }

  it('handles each key one at a time in publish order across competing consumers with failures', async () => {
    const random = seeded(42);
    const running = new Map<string, number>();
    const done = new Map<string, number[]>();
    const violations: string[] = [];
    let failures = 0;
    const consumers = [0, 1, 2].map((i) => {
      const o = t.outbox({ relay: { enabled: i === 0 } });
      o.subscribe(
        'ordered',
        {
          topics: ['ordered.test'],
          ordered: true,
          concurrency: 8,
          batchSize: 20,
          maxAttempts: 50,
          retry: { minDelayMs: 5, maxDelayMs: 20 },
        },
        async (m) => {
          const { key, seq } = m.payload as { key: string; seq: number };
          if ((running.get(key) ?? 0) > 0) violations.push(`${key}: two at once at seq ${seq}`);
          const finished = done.get(key) ?? [];
          if (finished.length !== seq)
            violations.push(`${key}: seq ${seq} started after ${finished.length} done`);
          running.set(key, (running.get(key) ?? 0) + 1);
          try {
            await new Promise((r) => setTimeout(r, random() * 3));
            if (random() < 0.1) {
              failures++;
              throw new Error('random failure');
            }
            finished.push(seq);
            done.set(key, finished);
          } finally {
            running.set(key, (running.get(key) ?? 1) - 1);
          }
        },
      );
      return o;
    });
    await consumers[0]?.declareSubscription('ordered', { topics: ['ordered.test'], ordered: true });
    await publishKeys(consumers[0] as Outbox, 'ordered.test', KEYS, PER_KEY);
    const started = performance.now();
    await Promise.all(consumers.map((o) => o.start()));
    await waitFor(
      'every key handled to its end',
      () => [...done.values()].reduce((n, seqs) => n + seqs.length, 0) === KEYS * PER_KEY,
      60_000,
    );
    const seconds = (performance.now() - started) / 1000;
    console.info(
      `ordered: ${KEYS} keys x ${PER_KEY} messages, 3 consumers, ${failures} failures retried, ` +
        `${Math.round((KEYS * PER_KEY) / seconds)} msg/s`,
    );
    await Promise.all(consumers.map((o) => o.stop()));
    expect(violations).toEqual([]);
    for (const seqs of done.values()) expect(seqs).toEqual([...Array(PER_KEY).keys()]);
    expect(failures).toBeGreaterThan(0);
  });

  it('moves a key on past a dead letter by default, and holds it with blockKeyOnDead until replay', async () => {
    for (const block of [false, true]) {
      const name = block ? 'ordered-block' : 'ordered-skip';
      const topic = `${name}.test`;
      const outbox = t.outbox();
      const handled: number[] = [];
      let poisoned = false;
      outbox.subscribe(
        name,
        { topics: [topic], ordered: true, blockKeyOnDead: block, maxAttempts: 1 },
        (m) => {
          const { seq } = m.payload as { seq: number };
          if (seq === 0 && !poisoned) {
            poisoned = true;
            throw new Error('poison head: fails its only attempt');
          }
          handled.push(seq);
        },
      );
      await outbox.declareSubscription(name, { topics: [topic], ordered: true });
      await outbox.publishMany(
        t.pool,
        [0, 1, 2].map((seq) => ({ topic, key: 'k', payload: { seq } })),
      );
      await outbox.start();
      await waitFor('the head is dead', async () => (await outbox.deadLetters(name)).length === 1);
      if (block) {
        // Nothing behind the dead head runs until it is replayed.
        await new Promise((r) => setTimeout(r, 300));
        expect(handled).toEqual([]);
        await outbox.replay(name);
        await waitFor('the key resumes in order after replay', () => handled.length === 3);
        expect(handled).toEqual([0, 1, 2]);
      } else {
        await waitFor('the key moved on', () => handled.length === 2);
        expect(handled).toEqual([1, 2]);
      }
      await outbox.stop();
    }
  });

  it('runs more keys in parallel: throughput grows with the number of keys (printed, not asserted)', async () => {
    const rates: string[] = [];
    for (const keys of [1, 10, 50]) {
      const name = `ordered-rate-${keys}`;
      const topic = `${name}.test`;
      const outbox = t.outbox();
      let handled = 0;
      outbox.subscribe(
        name,
        { topics: [topic], ordered: true, concurrency: 50, batchSize: 100 },
        async () => {
          await new Promise((r) => setTimeout(r, 2));
          handled++;
        },
      );
      await outbox.declareSubscription(name, { topics: [topic], ordered: true });
      await publishKeys(outbox, topic, keys, 200 / keys);
      const started = performance.now();
      await outbox.start();
      await waitFor('all handled', () => handled === 200, 60_000);
      rates.push(`${keys} keys: ${Math.round(200 / ((performance.now() - started) / 1000))} msg/s`);
      await outbox.stop();
    }
    console.info(`ordered throughput with a 2 ms handler, 200 messages: ${rates.join(', ')}`);
    expect(rates).toHaveLength(3);
  });
});
