import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, OutboxEvents, StandardSchemaV1 } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { deliveriesOf, killChildren, spawnFixture, type ConsumerChild } from './child.js';
import type { PoisonExitChildConfig } from './fixtures/poison-exit.fixture.js';

const EXIT_FIXTURE = fileURLToPath(new URL('./fixtures/poison-exit.fixture.ts', import.meta.url));
const GOOD = 200;
const CHUNK = 20;
const MAX_ATTEMPTS = 3;
/** Retries come back within tens of milliseconds, so the attempt budget, not the backoff, sets the pace. */
const FAST_RETRY = { minDelayMs: 20, maxDelayMs: 100 };
/** How long a poison message may take to reach the dead-letter state once published (in-process consumers). */
const DEAD_BOUND_MS = 15_000;

type DeadInfo = OutboxEvents['delivery:dead'][0];

describe('poison messages', () => {
  let t: OutboxTestContext;
  let relay: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    relay = t.outbox();
    await relay.start();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  /**
   * Publishes GOOD good messages in chunks of CHUNK, with one poison message in the middle of each of the first
   * `poisonCount` chunks, while the consumers run.
   */
  async function publishStream(
    topic: string,
    poisonCount: number,
    poisonPayload: (k: number) => unknown,
  ): Promise<{ good: string[]; poison: string[] }> {
    const good: string[] = [];
    const poison: string[] = [];
    for (let chunk = 0; chunk * CHUNK < GOOD; chunk += 1) {
      const inputs: { topic: string; payload: unknown }[] = Array.from({ length: CHUNK }, (_, i) => ({
        topic,
        payload: { n: chunk * CHUNK + i },
      }));
      if (chunk < poisonCount) inputs.splice(CHUNK / 2, 0, { topic, payload: poisonPayload(chunk) });
      const results = await relay.publishMany(t.pool, inputs);
      results.forEach((r, i) => (chunk < poisonCount && i === CHUNK / 2 ? poison : good).push(r.id));
    }
    return { good, poison };
  }

  /** Message ids of the subscription's deliveries in the given state. */
  async function idsIn(name: string, state: string): Promise<string[]> {
    return (await deliveriesOf(t.pool, name)).filter((d) => d.state === state).map((d) => d.message_id);
  }

  it('dead-letters a message whose handler always throws after maxAttempts, with its last error, while 200 others are handled', async () => {
    const name = 'poison_throw';
    const topic = 'poison.throw';
    await relay.declareSubscription(name, { topics: [topic] });
    const consumer = t.outbox({ relay: { enabled: false } });
    const dead: DeadInfo[] = [];
    consumer.on('delivery:dead', (info) => dead.push(info));
    const poisonAttempts = new Map<string, number[]>();
    const handled = new Set<string>();
    consumer.subscribe(
      name,
      { topics: [topic], maxAttempts: MAX_ATTEMPTS, retry: FAST_RETRY, pollIntervalMs: 200 },
      (m) => {
        const { poison } = m.payload as { poison?: number };
        if (poison === undefined) return void handled.add(m.id);
        poisonAttempts.set(m.id, [...(poisonAttempts.get(m.id) ?? []), m.attempt]);
        throw new Error(`cannot process poison ${poison} (attempt ${m.attempt})`);
      },
    );
    await consumer.start();

    const { good, poison } = await publishStream(topic, 5, (k) => ({ poison: k }));
    await waitFor(
      'every poison message dead',
      async () => (await idsIn(name, 'dead')).length === poison.length,
      DEAD_BOUND_MS,
    );
    await waitFor('every good message acked', async () => (await idsIn(name, 'done')).length === GOOD);
    await consumer.stop();

    expect(handled.size).toBe(GOOD);
    expect((await idsIn(name, 'done')).sort()).toEqual([...good].sort());
    for (const id of poison) expect(poisonAttempts.get(id)).toEqual([1, 2, 3]);
    const letters = await relay.deadLetters(name);
    expect(letters.map((d) => [d.messageId, d.attempt]).sort()).toEqual(
      poison.map((id) => [id, MAX_ATTEMPTS]).sort(),
    );
    for (const d of letters) {
      const k = poison.indexOf(d.messageId);
      expect(d.lastError).toMatch(new RegExp(`^Error: cannot process poison ${k} \\(attempt 3\\)`));
      expect(d.payload).toEqual({ poison: k });
    }
    expect(dead.map((d) => [d.deliveryId, d.attempt]).sort()).toEqual(
      letters.map((d) => [d.deliveryId, MAX_ATTEMPTS]).sort(),
    );
  });

  it('dead-letters a message that exits its consumer process after maxAttempts deaths, while the other consumers handle 200 messages', async () => {
    const name = 'poison_exit';
    const topic = 'poison.exit';
    await relay.declareSubscription(name, { topics: [topic] });
    const { id: poison } = await relay.publish(t.pool, topic, { poison: true });
    const config: PoisonExitChildConfig = {
      url: t.db.url,
      subscription: name,
      topic,
      leaseMs: 1_000,
      maxAttempts: MAX_ATTEMPTS,
    };
    const children: ConsumerChild[] = [];
    let poisonDead = false;
    let supervising = true;
    // Two consumer slots, each restarted when its process dies, like a supervisor would, until the poison is dead.
    const supervise = async () => {
      while (supervising && !poisonDead) {
        expect(children.length).toBeLessThanOrEqual(MAX_ATTEMPTS + 2);
        const child = spawnFixture(EXIT_FIXTURE, config);
        children.push(child);
        await waitFor('the consumer dies or the poison is dead', () => !child.alive() || poisonDead, 60_000);
      }
    };
    const slots = Promise.all([supervise(), supervise()]);
    slots.catch(() => undefined); // awaited below; a failure before that must not be an unhandled rejection
    let goodDoneBeforeDead: number | null = null;
    const watchPoison = waitFor(
      'the poison message dead',
      async () => {
        if ((await idsIn(name, 'dead')).length === 0) return false;
        goodDoneBeforeDead = (await idsIn(name, 'done')).length;
        poisonDead = true;
        return true;
      },
      60_000,
    );
    watchPoison.catch(() => undefined);

    // The good stream: a chunk at a time, each published once the previous one is acked.
    const good: string[] = [];
    try {
      while (good.length < GOOD) {
        const inputs = Array.from({ length: CHUNK / 2 }, (_, i) => ({
          topic,
          payload: { n: good.length + i },
        }));
        good.push(...(await relay.publishMany(t.pool, inputs)).map((r) => r.id));
        await waitFor(
          `the first ${good.length} good messages acked`,
          async () => (await idsIn(name, 'done')).length === good.length,
          30_000,
        );
      }
      await watchPoison;
      await slots;
    } finally {
      // On failure too: no slot may start a process after the test's cleanup.
      supervising = false;
    }

    const survivors = children.filter((c) => c.alive());
    const died = children.filter((c) => !c.alive());
    for (const c of survivors) {
      // A slot may have restarted its process just before the poison died: let it come up before stopping it.
      await c.waitForEvents('the surviving consumer ready', (e) => e.event === 'ready', 1, 30_000);
      expect(await c.kill('SIGTERM')).toEqual({ code: 0, signal: null });
    }
    // Exactly one process per attempt died, each by its own hand, each right after it started the poison.
    expect(died).toHaveLength(MAX_ATTEMPTS);
    for (const c of died) {
      expect(await c.exit).toEqual({ code: 1, signal: null });
      expect(c.events.filter((e) => e.event === 'started').at(-1)?.id).toBe(poison);
    }
    const events = children.flatMap((c) => c.events);
    expect(
      events
        .filter((e) => e.event === 'started' && e.id === poison)
        .map((e) => e.attempt)
        .sort(),
    ).toEqual([1, 2, 3]);

    // The good messages kept flowing while the poison one killed consumers, and all of them completed.
    expect(goodDoneBeforeDead).toBeGreaterThan(0);
    expect((await idsIn(name, 'done')).sort()).toEqual([...good].sort());
    for (const id of good) expect(events.some((e) => e.event === 'handled' && e.id === id)).toBe(true);
    const letters = await relay.deadLetters(name);
    expect(letters.map((d) => [d.messageId, d.attempt])).toEqual([[poison, MAX_ATTEMPTS]]);
    expect(letters[0]?.lastError).toMatch(/^lease expired/);
  }, 120_000);

  it('dead-letters a payload that fails the schema on its first attempt, without calling the handler, while 200 others are handled', async () => {
    const name = 'poison_schema';
    const topic = 'poison.schema';
    /** A hand-written Standard Schema v1 (what zod, valibot or arktype hand over): `n` must be an integer. */
    const schema: StandardSchemaV1<unknown, { n: number; square: number }> = {
      '~standard': {
        version: 1,
        vendor: 'chaos-test',
        validate(value) {
          const n = (value as { n?: unknown } | null)?.n;
          if (typeof n !== 'number' || !Number.isInteger(n))
            return { issues: [{ message: `expected an integer, got ${JSON.stringify(n)}`, path: ['n'] }] };
          return { value: { n, square: n * n } };
        },
      },
    };
    await relay.declareSubscription(name, { topics: [topic] });
    const consumer = t.outbox({ relay: { enabled: false } });
    const dead: DeadInfo[] = [];
    let retries = 0;
    consumer.on('delivery:dead', (info) => dead.push(info));
    consumer.on('delivery:retry', () => (retries += 1));
    const seen: { n: number; square: number }[] = [];
    consumer.subscribe(
      name,
      { topics: [topic], schema, maxAttempts: MAX_ATTEMPTS, retry: FAST_RETRY, pollIntervalMs: 200 },
      (m) => {
        seen.push(m.payload);
      },
    );
    await consumer.start();

    const { good, poison } = await publishStream(topic, 5, (k) => ({ n: `not-a-number-${k}` }));
    await waitFor(
      'every invalid payload dead',
      async () => (await idsIn(name, 'dead')).length === poison.length,
      DEAD_BOUND_MS,
    );
    await waitFor('every good message acked', async () => (await idsIn(name, 'done')).length === GOOD);
    await consumer.stop();

    // The handler saw only valid payloads, as the schema's output.
    expect(seen.map((p) => p.n).sort((a, b) => a - b)).toEqual(Array.from({ length: GOOD }, (_, n) => n));
    expect(seen.every((p) => p.square === p.n * p.n)).toBe(true);
    expect((await idsIn(name, 'done')).sort()).toEqual([...good].sort());
    const letters = await relay.deadLetters(name);
    expect(letters.map((d) => [d.messageId, d.attempt]).sort()).toEqual(poison.map((id) => [id, 1]).sort());
    for (const d of letters) {
      const k = poison.indexOf(d.messageId);
      expect(d.lastError).toContain("payload failed the subscription's schema check");
      expect(d.lastError).toContain(`n: expected an integer, got "not-a-number-${k}"`);
    }
    expect(dead.map((d) => d.attempt)).toEqual(poison.map(() => 1));
    expect(retries).toBe(0);
    expect(
      await count(
        t.pool,
        `SELECT count(*) AS n FROM outbox.message_deliveries WHERE subscription = $1 AND state = 'dead' AND attempt > 1`,
        [name],
      ),
    ).toBe(0);
  });
});
