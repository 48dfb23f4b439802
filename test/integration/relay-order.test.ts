import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgExecutor } from '../../src/db/executor.js';
import { schemaName } from '../../src/db/identifiers.js';
import { discard, type Outbox } from '../../src/index.js';
import { BEGIN_RELAY_BATCH, readRelayWindow } from '../../src/sql/relay.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/*
 * Per-key order follows causality: when message A of a key committed before message B of the same key was
 * inserted, every ordered subscription hands out A before B. The trap is a transaction that took its xid early
 * (any write) and publishes late: ordering by xid puts its message first.
 */
describe('relay order', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 40 });
  });
  afterAll(async () => t.close());

  /** A transaction that has taken its xid and holds it open. */
  async function openEarlyTransaction(): Promise<pg.PoolClient> {
    const client = await t.pool.connect();
    await client.query('BEGIN');
    await client.query('SELECT pg_current_xact_id()');
    return client;
  }

  /**
   * For each key: T2 takes an xid, then T1 publishes `paid` and commits, then T2 publishes `shipped` and commits.
   * All of it happens while no relay runs, so every pair lands in one relay window.
   */
  async function publishCausalPairs(outbox: Outbox, topic: string, keys: string[]): Promise<void> {
    const early = await Promise.all(keys.map(() => openEarlyTransaction()));
    for (const key of keys) {
      await outbox.publish(t.pool, topic, { step: 'paid' }, { key });
    }
    for (const [i, key] of keys.entries()) {
      const client = early[i] as pg.PoolClient;
      await outbox.publish(client, topic, { step: 'shipped' }, { key });
      await client.query('COMMIT');
      client.release();
    }
  }

  /** Starts a relay with the given batch size and an ordered consumer; returns the steps handled per key. */
  async function consume(name: string, topic: string, keys: number, relayBatchSize: number) {
    const outbox = t.outbox({ relay: { batchSize: relayBatchSize, pollIntervalMs: 5 } });
    const handled = new Map<string, string[]>();
    outbox.subscribe(name, { topics: [topic], ordered: true, concurrency: 8 }, (m) => {
      const key = m.key ?? '';
      handled.set(key, [...(handled.get(key) ?? []), (m.payload as { step: string }).step]);
    });
    await outbox.start();
    await waitFor(
      'both messages of every key handled',
      () => [...handled.values()].reduce((n, steps) => n + steps.length, 0) === keys * 2,
    );
    await outbox.stop();
    return handled;
  }

  it('hands out a message that committed first before one of a transaction that took its xid earlier', async () => {
    const declarer = t.outbox({ relay: { enabled: false } });
    await declarer.declareSubscription('causal-one', { topics: ['causal.one'], ordered: true });
    await publishCausalPairs(declarer, 'causal.one', ['order-1']);
    const handled = await consume('causal-one', 'causal.one', 1, 1000);
    expect(handled.get('order-1')).toEqual(['paid', 'shipped']);
  });

  it('keeps causal order per key when the window is relayed over many batches', async () => {
    const keys = Array.from({ length: 30 }, (_, i) => `order-${i}`);
    const declarer = t.outbox({ relay: { enabled: false } });
    await declarer.declareSubscription('causal-many', { topics: ['causal.many'], ordered: true });
    await publishCausalPairs(declarer, 'causal.many', keys);
    // 60 messages in one window, relayed 4 at a time: 15 batches.
    const handled = await consume('causal-many', 'causal.many', keys.length, 4);
    for (const key of keys) expect(handled.get(key), key).toEqual(['paid', 'shipped']);
  });

  it('makes a replay that queues a dead letter anew wait for a relay batch in flight', async () => {
    // Delivery ids of one key must appear in id order; a relay batch draws ids until it commits, so a replay that
    // draws a new id for its dead letter waits for that commit (and holds the next batch off until its own).
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    outbox.subscribe('replay-wait', { topics: ['replay.wait'], ordered: true }, () => {
      throw discard('dead at once');
    });
    await outbox.start();
    await outbox.publish(t.pool, 'replay.wait', {}, { key: 'k' });
    await waitFor('the delivery is dead', async () => (await outbox.deadLetters('replay-wait')).length === 1);
    await outbox.stop();
    const batch = await t.pool.connect();
    try {
      await batch.query(BEGIN_RELAY_BATCH);
      await readRelayWindow(pgExecutor(batch), schemaName('outbox'));
      let replayed = false;
      const replay = outbox.replay('replay-wait').then((r) => {
        replayed = true;
        return r;
      });
      await waitFor(
        'the replay waits on the delivery-ids lock',
        async () =>
          (await count(
            t.pool,
            `SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`,
          )) === 1,
      );
      expect(replayed).toBe(false);
      await batch.query('COMMIT');
      expect(await replay).toEqual({ replayed: 1 });
    } finally {
      batch.release();
    }
  });
});
