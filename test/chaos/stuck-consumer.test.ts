import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, OutboxMessage } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { deliveriesOf } from './child.js';

const LEASE_MS = 1_000;
const NAME = 'stuck';
const TOPIC = 'stuck.work';

describe('a consumer whose handler hangs', () => {
  let t: OutboxTestContext;
  let relay: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    relay = t.outbox();
    await relay.start();
  });
  afterAll(async () => t.close());

  it('leaves the deliveries it cannot start to a free consumer, which handles them on their first attempt', async () => {
    await relay.declareSubscription(NAME, { topics: [TOPIC] });
    const stuck = (await relay.publish(t.pool, TOPIC, { stuck: true })).id;
    const healthy: string[] = [];
    for (let i = 0; i < 3; i += 1) healthy.push((await relay.publish(t.pool, TOPIC, { i })).id);
    await waitFor('all four relayed', async () => (await deliveriesOf(t.pool, NAME)).length === 4);

    // Consumer A has one handler lane; its handler hangs on the stuck message (a hung downstream call).
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const startedA: OutboxMessage[] = [];
    const a = t.outbox({ relay: { enabled: false }, shutdownTimeoutMs: 30_000 });
    const options = {
      topics: [TOPIC],
      leaseMs: LEASE_MS,
      concurrency: 1,
      maxAttempts: 3,
      pollIntervalMs: 200,
    };
    a.subscribe(NAME, options, async (m) => {
      startedA.push(m);
      if (m.id === stuck) await gate;
    });
    await a.start();
    await waitFor('A is stuck', () => startedA.some((m) => m.id === stuck));

    // Consumer B is healthy and idle.
    const seenB: OutboxMessage[] = [];
    const b = t.outbox({ relay: { enabled: false } });
    b.subscribe(NAME, options, (m) => {
      seenB.push(m);
    });
    await b.start();
    await waitFor('every healthy delivery settled', async () => {
      const rows = await deliveriesOf(t.pool, NAME);
      return healthy.every((id) => rows.some((r) => r.message_id === id && r.state !== 'pending'));
    });
    release();
    await Promise.all([a.stop(), b.stop()]);

    const rows = await deliveriesOf(t.pool, NAME);
    const outcome = healthy.map((id) => rows.find((r) => r.message_id === id));
    expect(outcome.map((r) => [r?.message_id, r?.state, r?.attempt])).toEqual(
      healthy.map((id) => [id, 'done', 1]),
    );
    // Not an ordered subscription: B may take the given-back deliveries in any order.
    const byId = (a: [string, number], b: [string, number]) => Number(a[0]) - Number(b[0]);
    expect(
      seenB
        .filter((m) => m.id !== stuck)
        .map((m): [string, number] => [m.id, m.attempt])
        .sort(byId),
    ).toEqual(healthy.map((id): [string, number] => [id, 1]).sort(byId));
  });
});
