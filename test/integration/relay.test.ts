import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgExecutor } from '../../src/db/executor.js';
import { schemaName } from '../../src/db/identifiers.js';
import { isUniqueViolation } from '../../src/db/pg-errors.js';
import { BEGIN_RELAY_BATCH, readRelayWindow, relayBatch } from '../../src/sql/relay.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/** Deliveries the relay made for one subscription (none are consumed in these tests). */
const relayedTo = (t: OutboxTestContext, subscription: string) =>
  count(
    t.pool,
    `SELECT count(*) AS n FROM outbox.deliveries d JOIN outbox.subscriptions s ON s.id = d.subscription_id
     WHERE s.name = $1`,
    [subscription],
  );

const randomDelay = (maxMs: number) => new Promise((r) => setTimeout(r, Math.random() * maxMs));

describe('relay', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 30 });
  });
  afterAll(async () => t.close());

  it('relays every message exactly once when 8 producers commit out of id order', async () => {
    const outbox = t.outbox({ relay: { batchSize: 50, pollIntervalMs: 5 } });
    await outbox.declareSubscription('gap', { topics: ['gap.test'] });
    await outbox.start();
    const producers = 8;
    const perProducer = 300;
    const published: string[] = [];
    let rolledBack = 0;
    await Promise.all(
      Array.from({ length: producers }, async (_, p) => {
        const client = await t.pool.connect();
        try {
          for (let i = 0; i < perProducer; i++) {
            await client.query('BEGIN');
            const { id } = await outbox.publish(client, 'gap.test', { p, i });
            // Hold some transactions open so higher ids commit first.
            if (i % 7 === 0) await randomDelay(30);
            if (i % 13 === 0) {
              await client.query('ROLLBACK');
              rolledBack++;
            } else {
              await client.query('COMMIT');
              published.push(id);
            }
          }
        } finally {
          client.release();
        }
      }),
    );
    await waitFor(
      'every committed message relayed',
      async () => (await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries')) >= published.length,
      30_000,
    );
    const { rows } = await t.pool.query<{ message_id: string; n: string }>(
      'SELECT message_id, count(*) AS n FROM outbox.deliveries GROUP BY message_id',
    );
    expect(rolledBack).toBeGreaterThan(0);
    expect(rows.filter((r) => r.n !== '1')).toEqual([]);
    expect(new Set(rows.map((r) => r.message_id))).toEqual(new Set(published));
    const status = await outbox.status();
    expect(status.relay.backlog).toBe(0);
    await outbox.stop();
  });

  it('closes a relay window that held an exact multiple of the batch size and keeps relaying', async () => {
    const outbox = t.outbox({ relay: { batchSize: 10, pollIntervalMs: 5 } });
    await outbox.declareSubscription('exact', { topics: ['exact.batch'] });
    // 20 messages committed before the relay starts: one window, two full batches, then an empty one.
    await outbox.publishMany(
      t.pool,
      Array.from({ length: 20 }, (_, i) => ({ topic: 'exact.batch', payload: { i } })),
    );
    await outbox.start();
    const relayed = () => relayedTo(t, 'exact');
    await waitFor('the 20 are relayed', async () => (await relayed()) === 20);
    await waitFor('the window is closed', async () => {
      const { rows } = await t.pool.query<{ open: boolean }>(
        'SELECT target_snapshot IS NOT NULL AS open FROM outbox.relay_state',
      );
      return rows[0]?.open === false;
    });
    await outbox.publish(t.pool, 'exact.batch', { i: 20 });
    await waitFor('a later message is relayed too', async () => (await relayed()) === 21);
    await outbox.stop();
  });

  it('keeps relaying while an unrelated transaction stays open', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('long-tx', { topics: ['long.tx'] });
    await outbox.start();
    // An unrelated writer that holds its transaction (and its xid) open for the whole test.
    const blocker = new pg.Client({ connectionString: t.db.url });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('CREATE TABLE unrelated (id int)');
    await blocker.query('INSERT INTO unrelated VALUES (1)');
    // And an outbox producer whose own message stays uncommitted meanwhile.
    const slowProducer = await t.pool.connect();
    await slowProducer.query('BEGIN');
    const slow = await outbox.publish(slowProducer, 'long.tx', { slow: true });
    try {
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) ids.push((await outbox.publish(t.pool, 'long.tx', { i })).id);
      await waitFor('messages committed after the open transactions are relayed', async () => {
        const n = await count(
          t.pool,
          'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = ANY($1::bigint[])',
          [ids],
        );
        return n === ids.length;
      });
      expect(
        await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1', [slow.id]),
      ).toBe(0);
      await slowProducer.query('COMMIT');
      await waitFor(
        'the late commit is relayed too',
        async () =>
          (await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1', [
            slow.id,
          ])) === 1,
      );
    } finally {
      slowProducer.release();
      await blocker.query('ROLLBACK');
      await blocker.end();
      await outbox.stop();
    }
  });

  it('runs one active relay per schema and a standby takes over when it stops', async () => {
    const a = t.outbox({ relay: { standbyPollMs: 50 } });
    const b = t.outbox({ relay: { standbyPollMs: 50 } });
    await a.declareSubscription('failover', { topics: ['failover.test'] });
    await a.start();
    await waitFor('a relay is active', async () => {
      const { rows } = await t.pool.query(
        `SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 1870000001 AND granted`,
      );
      return rows.length === 1;
    });
    await b.start();
    await a.publish(t.pool, 'failover.test', { n: 1 });
    await waitFor('first message relayed', async () => (await relayedTo(t, 'failover')) === 1);
    await a.stop();
    await a.publish(t.pool, 'failover.test', { n: 2 });
    await waitFor(
      'the standby relays after the active one stopped',
      async () => (await relayedTo(t, 'failover')) === 2,
    );
    await b.stop();
  });

  it('refuses to relay a message twice when two writers read the same state (no advisory lock)', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('race', { topics: ['race.test'] });
    await outbox.publishMany(
      t.pool,
      Array.from({ length: 50 }, (_, n) => ({ topic: 'race.test', payload: { n } })),
    );
    const schema = schemaName('outbox');
    const [a, b] = await Promise.all([t.pool.connect(), t.pool.connect()]);
    try {
      await a.query(BEGIN_RELAY_BATCH);
      await b.query(BEGIN_RELAY_BATCH);
      const [wa, wb] = await Promise.all([
        readRelayWindow(pgExecutor(a), schema),
        readRelayWindow(pgExecutor(b), schema),
      ]);
      expect(wb.version).toBe(wa.version);
      const first = await relayBatch(pgExecutor(a), schema, wa, 1000);
      expect(first.stateWritten).toBe(true);
      // b's INSERT waits on a's uncommitted index entries, then finds them committed.
      const second = relayBatch(pgExecutor(b), schema, wb, 1000).then(
        (r) => r,
        (error: unknown) => error,
      );
      await a.query('COMMIT');
      const outcome = await second;
      expect(isUniqueViolation(outcome)).toBe(true);
      await b.query('ROLLBACK');
    } finally {
      a.release();
      b.release();
    }
    expect(await relayedTo(t, 'race')).toBe(50);
  });
});
