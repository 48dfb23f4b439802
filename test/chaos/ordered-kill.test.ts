import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { OutboxMessage } from '../../src/index.js';
import { outlastLease } from '../helpers/leases.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { killChildren, spawnConsumer } from './child.js';

const LEASE_MS = 1_000;
const NAME = 'ordered_kill';
const TOPIC = 'ordered.kill';

describe('an ordered subscription whose consumer process dies mid-handler', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  it('keeps the key waiting behind the dead consumer, then hands the head and its successors out in order', async () => {
    const relay = t.outbox();
    await relay.declareSubscription(NAME, { topics: [TOPIC], ordered: true });
    await relay.start();
    const child = spawnConsumer({
      url: t.db.url,
      relay: false,
      subscriptions: [
        { name: NAME, topics: [TOPIC], mode: 'lease', behavior: 'block', leaseMs: LEASE_MS, ordered: true },
      ],
    });
    await child.waitForEvents('child ready', (e) => e.event === 'ready');
    await relay.publishMany(
      t.pool,
      [0, 1, 2].map((seq) => ({ topic: TOPIC, key: 'k', payload: { seq } })),
    );
    await child.waitForEvents('the child runs the head', (e) => e.event === 'started');

    // A second consumer process of the subscription: while the head runs elsewhere, nothing of the key reaches it.
    const seen: OutboxMessage[] = [];
    const second = t.outbox({ relay: { enabled: false } });
    second.subscribe(
      NAME,
      { topics: [TOPIC], ordered: true, leaseMs: LEASE_MS, pollIntervalMs: 100 },
      (m) => {
        seen.push(m);
      },
    );
    await second.start();
    // Twice the head's lease runs out as it was, and a claim passes the key by for a sentinel of another key
    // (whichever consumer takes it; the child blocks on it too).
    const head = child.events.find((e) => e.event === 'started');
    const rounds = await outlastLease(t.pool, head?.deliveryId ?? '', 2, async (round) => {
      return (await relay.publish(t.pool, TOPIC, { sentinel: round }, { key: `other-${round}` })).id;
    });
    expect(rounds.map((r) => r.attempt)).toEqual([1, 1, 1]);
    const ends = rounds.map((r) => r.leasedUntil.getTime());
    expect(ends).toEqual([...ends].sort((a, b) => a - b));
    expect(new Set(ends).size).toBe(ends.length);
    const ofKey = (ms: OutboxMessage[]) => ms.filter((m) => m.key === 'k');
    expect(ofKey(seen)).toEqual([]);
    const startedOfKey = child.events.filter(
      (e) => e.event === 'started' && (e.payload as { seq?: number }).seq !== undefined,
    );
    expect(startedOfKey).toHaveLength(1);

    await child.kill('SIGKILL');
    await waitFor('the key is handled to its end', () => ofKey(seen).length === 3);
    expect(ofKey(seen).map((m) => [(m.payload as { seq: number }).seq, m.attempt])).toEqual([
      [0, 2],
      [1, 1],
      [2, 1],
    ]);
    await Promise.all([second.stop(), relay.stop()]);
  });
});
