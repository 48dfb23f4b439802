import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { deliveriesOf, killChildren, spawnConsumer, type ChildEvent, type ConsumerChild } from './child.js';

const MAX_ATTEMPTS = 3;
const NAME = 'crashy';
const TOPIC = 'crash.loop';

describe('a handler that crashes its process', () => {
  let t: OutboxTestContext;
  let relay: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    relay = t.outbox();
    await relay.start();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  it('dead-letters a poison message after maxAttempts crashes while healthy messages keep flowing', async () => {
    await relay.declareSubscription(NAME, { topics: [TOPIC] });
    const poison = (await relay.publish(t.pool, TOPIC, { poison: true })).id;
    const healthy = [(await relay.publish(t.pool, TOPIC, { n: 0 })).id];
    const children: ConsumerChild[] = [];
    const poisonDead = async () => (await deliveriesOf(t.pool, NAME)).some((d) => d.state === 'dead');

    // Restart the consumer whenever it dies, like a supervisor would, until the poison message is dead.
    while (!(await poisonDead())) {
      expect(children.length).toBeLessThanOrEqual(MAX_ATTEMPTS + 1);
      const child = spawnConsumer({
        url: t.db.url,
        relay: false,
        subscriptions: [
          {
            name: NAME,
            topics: [TOPIC],
            mode: 'lease',
            behavior: 'crash-on-poison',
            leaseMs: 1_000,
            maxAttempts: MAX_ATTEMPTS,
            batchSize: 1,
            concurrency: 1,
          },
        ],
      });
      children.push(child);
      await waitFor('the consumer is ready or dead', () => !child.alive() || child.events.length > 0);
      // Each consumer that comes up gets fresh healthy work next to the poison message.
      if (child.alive()) healthy.push((await relay.publish(t.pool, TOPIC, { n: healthy.length })).id);
      await waitFor(
        'the consumer dies or the poison message is dead',
        async () => !child.alive() || poisonDead(),
      );
      if (!child.alive()) expect(await child.exit).toEqual({ code: null, signal: 'SIGKILL' });
    }

    await waitFor('every healthy message acked', async () => {
      const rows = await deliveriesOf(t.pool, NAME);
      return healthy.every((id) => rows.some((r) => r.message_id === id && r.state === 'done'));
    });
    const last = children.at(-1);
    expect(last?.alive()).toBe(true);
    expect(await last?.kill('SIGTERM')).toEqual({ code: 0, signal: null });

    const events = children.flatMap((c) => c.events);
    const startsOf = (id: string) => events.filter((e: ChildEvent) => e.event === 'started' && e.id === id);
    expect(startsOf(poison).map((e) => e.attempt)).toEqual([1, 2, 3]);
    expect(
      children.filter((c) => c.events.some((e) => e.event === 'started' && e.id === poison)),
    ).toHaveLength(MAX_ATTEMPTS);

    const rows = await deliveriesOf(t.pool, NAME);
    const dead = rows.find((r) => r.message_id === poison);
    expect(dead).toMatchObject({ state: 'dead', attempt: MAX_ATTEMPTS });
    expect(dead?.last_error).toMatch(/lease expired/);
    // Healthy messages all complete. A crash can cost one its ack (written just after its handler returned), so
    // it may be handled again: at-least-once, not exactly-once.
    for (const id of healthy) {
      expect(rows.find((r) => r.message_id === id)?.state).toBe('done');
      expect(events.some((e) => e.event === 'handled' && e.id === id)).toBe(true);
    }
    const letters = await relay.deadLetters(NAME);
    expect(letters.map((d) => [d.messageId, d.attempt])).toEqual([[poison, MAX_ATTEMPTS]]);
  });
});
