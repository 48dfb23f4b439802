import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox, isOutboxError, type Outbox } from '../../src/index.js';
import { dumpAndRestore } from '../helpers/dump.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../helpers/postgres.js';

/** Subscribes `name` and collects the ids of the messages it handles. */
function collect(outbox: Outbox, name: string, topic: string): string[] {
  const handled: string[] = [];
  outbox.subscribe(name, { topics: [topic] }, (m) => {
    handled.push(m.id);
  });
  return handled;
}

async function publishN(outbox: Outbox, db: pg.Pool, topic: string, n: number): Promise<string[]> {
  const results = await outbox.publishMany(
    db,
    Array.from({ length: n }, (_, i) => ({ topic, payload: { i } })),
  );
  return results.map((r) => r.id);
}

const sorted = (ids: string[]) => [...ids].sort((a, b) => Number(a) - Number(b));

describe('relay position', () => {
  let t: OutboxTestContext;
  let cluster: EmbeddedPostgres | null = null;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => {
    await t.close();
    await cluster?.stop();
  });

  it('relays a message whose INSERT names a tx_id of its own', async () => {
    const outbox = t.outbox({ relay: { pollIntervalMs: 5 } });
    const handled = collect(outbox, 'forged', 'forged.test');
    await outbox.start();
    // '1' is visible in every snapshot: taken at face value, the relay would count the row as relayed already.
    const { rows } = await t.pool.query<{ id: string }>(
      `INSERT INTO outbox.messages (topic, payload, tx_id) VALUES ('forged.test', '{}', '1') RETURNING id`,
    );
    const id = rows[0]?.id ?? '';
    await waitFor('the message is handled', () => handled.includes(id));
    expect(await count(t.pool, `SELECT count(*) AS n FROM outbox.messages WHERE tx_id = '1'`)).toBe(0);
    await outbox.stop();
  });

  it('runs one relay per schema even for two schema names whose hashtext collides', async () => {
    // Two names with the same 32-bit hashtext, found on this server.
    const { rows } = await t.pool.query<{ names: string[] }>(
      `SELECT array_agg(n ORDER BY n) AS names
       FROM (SELECT 'outbox_' || g AS n FROM generate_series(1, 400000) g) c
       GROUP BY hashtext(n)
       HAVING count(*) > 1
       LIMIT 1`,
    );
    const names = rows[0]?.names ?? [];
    expect(names).toHaveLength(2);
    const outboxes = names.map((schema) => t.outbox({ schema, relay: { pollIntervalMs: 5 } }));
    const handled = outboxes.map((o) => collect(o, 'collide', 'collide.test'));
    for (const o of outboxes) await o.migrate();
    await Promise.all(outboxes.map((o) => o.start()));
    await Promise.all(outboxes.map((o) => o.publish(t.pool, 'collide.test', {})));
    await waitFor('both schemas relayed and handled their message', () =>
      handled.every((h) => h.length === 1),
    );
    await Promise.all(outboxes.map((o) => o.stop()));
  });

  it('relays a message of a transaction that was running at the last window but not in its in-progress list', async () => {
    // A snapshot lists running transactions only below its xmax (the latest completed xid + 1). On a cluster of its
    // own, so that nothing else completes a transaction in between: P1 takes an xid, P2 takes a higher one and
    // publishes first (the lower message id), P1 publishes and commits. A window closed now has P1's message as its
    // highest id and P2 running at its xmax, unlisted.
    const own = await startEmbeddedPostgres();
    const pool = new pg.Pool({ connectionString: own.url, max: 4 });
    // pool.end() resolves before its sockets close; stopping the server right after ends them, as expected.
    pool.on('error', () => undefined);
    try {
      const outbox = createOutbox({ pool, logger: testLogger, relay: { pollIntervalMs: 5 } });
      await outbox.migrate();
      await outbox.declareSubscription('running', { topics: ['running.test'] });
      const [p1, p2] = [await pool.connect(), await pool.connect()];
      try {
        for (const c of [p1, p2]) {
          await c.query('BEGIN');
          await c.query('SELECT pg_current_xact_id()');
        }
        const late = await outbox.publish(p2, 'running.test', { p: 2 });
        const early = await outbox.publish(p1, 'running.test', { p: 1 });
        await p1.query('COMMIT');
        await outbox.start();
        const delivered = (id: string) =>
          count(pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1', [id]);
        await waitFor('the committed message relayed', async () => (await delivered(early.id)) === 1);
        await p2.query('COMMIT');
        await waitFor(
          'the message of the transaction still running then relayed',
          async () => (await delivered(late.id)) === 1,
        );
        await outbox.stop();
      } finally {
        p1.release();
        p2.release();
      }
    } finally {
      await pool.end();
      await own.stop();
    }
  });

  it('finishes a window that an earlier version left open, without relaying its first part again', async () => {
    const outbox = t.outbox({ relay: { enabled: false } });
    await outbox.declareSubscription('legacy', { topics: ['legacy.test'] });
    const { rows: before } = await t.pool.query<{ s: string }>('SELECT pg_current_snapshot()::text AS s');
    // Three transactions of two messages each; the earlier version walked windows in (tx_id, id) order.
    const ids: string[][] = [];
    for (let i = 0; i < 3; i++) ids.push(await publishN(outbox, t.pool, 'legacy.test', 2));
    const { rows: txs } = await t.pool.query<{ tx: string; id: string }>(
      `SELECT tx_id::text AS tx, id::text AS id FROM outbox.messages WHERE id = ANY ($1::bigint[]) ORDER BY tx_id, id`,
      [ids.flat()],
    );
    const position = txs[3] as { tx: string; id: string };
    // The state that version left after relaying the first two transactions in a full batch of 4.
    await t.pool.query(
      `WITH sub AS (SELECT id FROM outbox.subscriptions WHERE name = 'legacy')
       INSERT INTO outbox.deliveries (subscription_id, message_id, key, available_at)
       SELECT sub.id, m.id, m.key, m.created_at FROM outbox.messages m, sub
       WHERE (m.tx_id, m.id) <= ($1::xid8, $2::bigint) AND m.id = ANY ($3::bigint[])`,
      [position.tx, position.id, ids.flat()],
    );
    await t.pool.query(
      `UPDATE outbox.relay_state
       SET done_snapshot = $1::pg_snapshot, target_snapshot = pg_current_snapshot(), done_max_id = 0,
           target_max_id = NULL, window_after_id = 0, position_tx = $2::xid8, position_id = $3::bigint`,
      [before[0]?.s, position.tx, position.id],
    );
    const relay = t.outbox({ relay: { pollIntervalMs: 5 } });
    const handled = collect(relay, 'legacy', 'legacy.test');
    await relay.start();
    await waitFor('all six handled', () => handled.length === 6);
    await waitFor(
      'the window closed',
      async () =>
        (await count(
          t.pool,
          'SELECT count(*) AS n FROM outbox.relay_state WHERE target_snapshot IS NULL',
        )) === 1,
    );
    await relay.stop();
    expect(sorted(handled)).toEqual(sorted(ids.flat()));
    expect(
      await count(t.pool, `SELECT count(*) AS n FROM outbox.relay_state WHERE position_tx IS NULL`),
    ).toBe(1);
  });

  it('refuses to relay after a restore into another cluster, then relays what was not delivered after a reset', async () => {
    // In the source database: 10 messages handled, 5 committed while no relay ran.
    const source = t.outbox({ relay: { pollIntervalMs: 5 } });
    await source.declareSubscription('moved', { topics: ['moved.test'] });
    const handledAtSource = collect(source, 'moved', 'moved.test');
    await source.start();
    await publishN(source, t.pool, 'moved.test', 10);
    await waitFor('the first messages handled', () => handledAtSource.length === 10);
    await source.stop();
    const unrelayed = await publishN(source, t.pool, 'moved.test', 5);

    cluster = await startEmbeddedPostgres();
    const admin = new pg.Client({ connectionString: cluster.url });
    await admin.connect();
    await admin.query('CREATE DATABASE restored');
    await admin.end();
    const url = new URL(cluster.url);
    url.pathname = '/restored';
    const how = await dumpAndRestore(t.db.url, url.toString());
    console.info(`relay position: moved the database with ${how}`);

    const pool = new pg.Pool({ connectionString: url.toString() });
    try {
      const target = createOutbox({ pool, logger: testLogger, relay: { pollIntervalMs: 5 } });
      await target.migrate();
      const refusals: unknown[] = [];
      target.on('error', (error) => {
        if (isOutboxError(error, 'OUTBOX_RELAY_CLUSTER_CHANGED')) refusals.push(error);
      });
      const handled = collect(target, 'moved', 'moved.test');
      const publishedHere = await publishN(target, pool, 'moved.test', 5);
      await target.start();
      await waitFor('the relay refuses the foreign position', () => refusals.length >= 2);
      expect(await count(pool, 'SELECT count(*) AS n FROM outbox.deliveries')).toBe(0);

      const reset = await target.resetRelay();
      expect(reset).toEqual({ messages: 10, deliveries: 10 });
      await waitFor('the undelivered messages handled', () => handled.length === 10);
      const after = await publishN(target, pool, 'moved.test', 3);
      await waitFor('a message published after the reset handled', () => handled.length === 13);
      await target.stop();
      // Nothing handled at the source came again, and nothing twice.
      expect(sorted(handled)).toEqual(sorted([...unrelayed, ...publishedHere, ...after]));
    } finally {
      await pool.end();
    }
  });
});
