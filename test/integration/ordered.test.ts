import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discard, type Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

interface Labelled {
  key: string;
  label: string;
}

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
      let otherHandled = false;
      let poisoned = false;
      outbox.subscribe(name, { topics: [topic], ordered: true, maxAttempts: 1 }, (m) => {
        if (m.key === 'other') {
          otherHandled = true;
          return;
        }
        const { seq } = m.payload as { seq: number };
        if (seq === 0 && !poisoned) {
          poisoned = true;
          throw new Error('poison head: fails its only attempt');
        }
        handled.push(seq);
      });
      await outbox.declareSubscription(name, { topics: [topic], ordered: true, blockKeyOnDead: block });
      await outbox.publishMany(
        t.pool,
        [0, 1, 2].map((seq) => ({ topic, key: 'k', payload: { seq } })),
      );
      await outbox.start();
      await waitFor('the head is dead', async () => (await outbox.deadLetters(name)).length === 1);
      if (block) {
        // Nothing behind the dead head runs until it is replayed. A message of another key published now is due
        // after them: once it is handled, every claim that could have taken them has run.
        await outbox.publish(t.pool, topic, { other: true }, { key: 'other' });
        await waitFor('the other key is handled', () => otherHandled);
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

  /**
   * An ordered subscription whose handler discards the first delivery labelled H, holds the one labelled S until
   * `releaseS()`, and records what starts and finishes, and the most deliveries of one key running at once.
   */
  function orderedScenario(outbox: Outbox, name: string, topic: string, blockKeyOnDead: boolean) {
    const running = new Map<string, number>();
    const state = {
      started: [] as string[],
      done: [] as string[],
      deliveryIds: [] as string[],
      mostAtOnce: 0,
      releaseS: () => undefined as void,
    };
    const gate = new Promise<void>((resolve) => (state.releaseS = resolve));
    let discarded = false;
    outbox.subscribe(name, { topics: [topic], ordered: true, blockKeyOnDead, concurrency: 4 }, async (m) => {
      const { key, label } = m.payload as Labelled;
      running.set(key, (running.get(key) ?? 0) + 1);
      state.mostAtOnce = Math.max(state.mostAtOnce, running.get(key) ?? 0);
      state.started.push(label);
      try {
        if (label === 'H' && !discarded) {
          discarded = true;
          throw discard('poison head');
        }
        if (label === 'S') await gate;
        state.done.push(label);
        if (label === 'H') state.deliveryIds.push(m.deliveryId);
      } finally {
        running.set(key, (running.get(key) ?? 1) - 1);
      }
    });
    return state;
  }

  async function publishHeadAndSuccessor(outbox: Outbox, topic: string): Promise<void> {
    await outbox.publishMany(t.pool, [
      { topic, key: 'k', payload: { key: 'k', label: 'H' } },
      { topic, key: 'k', payload: { key: 'k', label: 'S' } },
    ]);
  }

  /**
   * Progress instead of a sleep: a message of another key, published now, is due after everything replayed or
   * published before it, so once it is handled every claim that could have taken those has run.
   */
  async function claimsCaughtUp(outbox: Outbox, topic: string, state: { done: string[] }, label: string) {
    await outbox.publish(t.pool, topic, { key: 'other', label }, { key: 'other' });
    await waitFor(`${label} handled`, () => state.done.includes(label));
  }

  it.each([
    ['', false],
    [', also when blockKeyOnDead is switched on before the replay', true],
  ])(
    'replays the dead head of an ordered key while its successor runs without running two of the key at once%s',
    async (_, switchOn) => {
      const name = switchOn ? 'replay-switch' : 'replay-skip';
      const topic = `${name}.test`;
      const outbox = t.outbox();
      const state = orderedScenario(outbox, name, topic, false);
      await outbox.declareSubscription(name, { topics: [topic], ordered: true });
      await outbox.start();
      await publishHeadAndSuccessor(outbox, topic);
      const [letter] = await waitFor('H is a dead letter', async () => {
        const letters = await outbox.deadLetters(name);
        return letters.length === 1 ? letters : undefined;
      });
      await waitFor('S runs: the key moved past its dead head', () => state.started.includes('S'));
      if (switchOn) {
        await outbox.declareSubscription(name, { topics: [topic], ordered: true, blockKeyOnDead: true });
      }

      expect(await outbox.replay(name)).toEqual({ replayed: 1 });
      await claimsCaughtUp(outbox, topic, state, 'M');
      expect(state.started).toEqual(['H', 'S', 'M']);

      state.releaseS();
      await waitFor('H handled after S', () => state.done.includes('H'));
      expect(state.done).toEqual(['M', 'S', 'H']);
      expect(state.mostAtOnce).toBe(1);
      // It queued after everything of its key under a new delivery id.
      expect(state.deliveryIds).toHaveLength(1);
      expect(BigInt(state.deliveryIds[0] ?? '0')).toBeGreaterThan(BigInt(letter?.deliveryId ?? '0'));
      expect(await outbox.deadLetters(name)).toEqual([]);
      await outbox.stop();
    },
  );

  it('replays the dead head of a key that blocks on dead letters first, under its own delivery id', async () => {
    const name = 'replay-block';
    const topic = 'replay-block.test';
    const outbox = t.outbox();
    const state = orderedScenario(outbox, name, topic, true);
    state.releaseS();
    await outbox.declareSubscription(name, { topics: [topic], ordered: true, blockKeyOnDead: true });
    await outbox.start();
    await publishHeadAndSuccessor(outbox, topic);
    const [letter] = await waitFor('H is a dead letter', async () => {
      const letters = await outbox.deadLetters(name);
      return letters.length === 1 ? letters : undefined;
    });
    await claimsCaughtUp(outbox, topic, state, 'M');
    expect(state.started).toEqual(['H', 'M']);

    expect(await outbox.replay(name)).toEqual({ replayed: 1 });
    await waitFor('H and S handled', () => state.done.includes('S'));
    expect(state.done).toEqual(['M', 'H', 'S']);
    expect(state.mostAtOnce).toBe(1);
    expect(state.deliveryIds).toEqual([letter?.deliveryId]);
    await outbox.stop();
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
