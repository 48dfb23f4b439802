import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox, type Outbox } from '../../src/index.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { createTestDatabase, startEmbeddedPostgres, type EmbeddedPostgres } from '../helpers/postgres.js';
import { createEffectsTable, killChildren, spawnConsumer, type ChildSubscription } from './child.js';

const TOPIC = 'tick';
/** Pace of the steady producer: enough traffic to be mid-flight at the restart, little CPU on a small machine. */
const PUBLISH_PACE_MS = 5;

/** Publishes one message at a time until stopped; keeps the ids of the publishes that returned. */
function startPublishing(outbox: Outbox, pool: pg.Pool) {
  const committed: string[] = [];
  let failed = 0;
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      try {
        committed.push((await outbox.publish(pool, TOPIC, { n: committed.length })).id);
      } catch {
        failed += 1; // the server is down; a publish that threw may or may not have committed
      }
      await delay(PUBLISH_PACE_MS);
    }
  })();
  return {
    committed,
    failed: () => failed,
    async stop() {
      stopped = true;
      await done;
    },
  };
}

/** How many deliveries of the given messages are done, over all subscriptions. */
function doneCount(pool: pg.Pool, ids: string[]): Promise<number> {
  return count(
    pool,
    `SELECT count(DISTINCT (subscription, message_id)) AS n
     FROM outbox.message_deliveries
     WHERE message_id = ANY($1::bigint[])
       AND state = 'done'`,
    [ids],
  );
}

describe('PostgreSQL restarts under a consumer process', () => {
  let server: EmbeddedPostgres;

  beforeAll(async () => {
    server = await startEmbeddedPostgres();
  });
  afterEach(killChildren);
  afterAll(async () => server?.stop());

  async function deliversEverythingAcross(restart: () => Promise<void>) {
    const db = await createTestDatabase(server.url);
    const pool = new pg.Pool({ connectionString: db.url, max: 4 });
    // Idle pooled clients report the server's shutdown on the pool: the owner of a pool listens.
    pool.on('error', () => undefined);
    const outbox = createOutbox({ pool, logger: testLogger, relay: { enabled: false } });
    await outbox.migrate();
    await createEffectsTable(pool);
    const common = { topics: [TOPIC], behavior: 'ack' as const, leaseMs: 2_000, maxAttempts: 100 };
    const subscriptions: ChildSubscription[] = [
      { name: 'lease_sub', mode: 'lease', ...common },
      { name: 'tx_sub', mode: 'transactional', ...common },
    ];
    for (const s of subscriptions) await outbox.declareSubscription(s.name, { topics: s.topics });
    const child = spawnConsumer({ url: db.url, relay: true, subscriptions });
    await child.waitForEvents('child ready', (e) => e.event === 'ready');

    const producer = startPublishing(outbox, pool);
    const handled = (sub: string) =>
      child.events.filter((e) => e.event === 'handled' && e.subscription === sub);
    await child.waitForEvents(
      'traffic flows',
      (e) => e.event === 'handled' && e.subscription === 'tx_sub',
      20,
    );
    await restart();
    const afterRestart = producer.committed.length;
    await waitFor('publishes succeed again', () => producer.committed.length >= afterRestart + 30, 30_000);
    await producer.stop();
    const ids = producer.committed;
    await waitFor(
      'every committed message done for both subscriptions',
      async () => ((await doneCount(pool, ids)) === 2 * ids.length ? true : child.alive() ? false : 'died'),
      40_000,
    ).catch(async (error: unknown) => {
      console.error(JSON.stringify((await outbox.status()).subscriptions), child.stderr());
      throw error;
    });

    expect(child.alive(), child.stderr()).toBe(true);
    const leaseHandled = handled('lease_sub').map((e) => e.id);
    const lost = ids.filter((id) => !leaseHandled.includes(id));
    const duplicates = leaseHandled.length - new Set(leaseHandled).size;
    const { rows: effects } = await pool.query<{ message_id: string; n: string }>(
      `SELECT message_id::text, count(*) AS n FROM chaos_effects WHERE subscription = 'tx_sub' GROUP BY message_id`,
    );
    const troubles = child.events.filter((e) => e.event === 'outbox-error' || e.event === 'pool-error');
    console.info(
      `restart: ${ids.length} committed, ${producer.failed()} publishes failed, lost ${lost.length}, ` +
        `lease-mode duplicates ${duplicates}, errors reported in the child ${troubles.length}`,
    );
    expect(lost).toEqual([]);
    // At-least-once in lease mode: a duplicate is an ack lost with the server, at most a claim batch of them.
    expect(duplicates).toBeLessThanOrEqual(100);
    // Transactional mode: the effect commits with the ack, so every committed message has exactly one.
    expect(effects.filter((e) => e.n !== '1')).toEqual([]);
    expect(ids.filter((id) => !effects.some((e) => e.message_id === id))).toEqual([]);
    // The restart reached the child: it saw errors, handled them, and lived on.
    expect(troubles.length).toBeGreaterThan(0);

    expect(await child.kill('SIGTERM')).toEqual({ code: 0, signal: null });
    await pool.end();
    await db.drop();
  }

  it('delivers every committed message, and the consumer process lives, across a fast shutdown and restart', async () => {
    await deliversEverythingAcross(async () => {
      await server.stopServer();
      await server.startServer();
    });
  });

  it('delivers every committed message, and the consumer process lives, across a server crash and recovery', async () => {
    await deliversEverythingAcross(async () => {
      await server.killServer();
      await server.startServer();
    });
  });
});

describe('connections terminated by the server', () => {
  let t: OutboxTestContext;

  beforeAll(async () => {
    t = await setupOutboxTest();
    await createEffectsTable(t.pool);
    t.pool.on('error', () => undefined); // the test owns this pool; its idle clients are terminated too
  });
  afterAll(async () => t.close());

  it('resumes delivery in the same process after pg_terminate_backend of every outbox connection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (error: unknown) => unhandled.push(error);
    process.on('uncaughtException', onUnhandled);
    process.on('unhandledRejection', onUnhandled);
    try {
      const outbox = t.outbox();
      const holding: string[] = [];
      let release = () => {};
      const gate = new Promise<void>((resolve) => (release = resolve));
      const options = { topics: [TOPIC], leaseMs: 1_500, pollIntervalMs: 200 };
      outbox.subscribe('term_lease', options, () => undefined);
      outbox.subscribe('term_tx', { ...options, mode: 'transactional' }, async (m, ctx) => {
        if ((m.payload as { hold?: boolean }).hold === true && m.attempt === 1) {
          holding.push(m.id);
          await gate; // the handler's transaction is open while its connection is terminated
        }
        await ctx.tx.query(
          `INSERT INTO chaos_effects (subscription, message_id, attempt) VALUES ('term_tx', $1, $2)`,
          [m.id, m.attempt],
        );
      });
      await outbox.start();
      const ids = [(await outbox.publish(t.pool, TOPIC, { hold: true })).id];
      for (let i = 0; i < 5; i += 1) ids.push((await outbox.publish(t.pool, TOPIC, { i })).id);
      await waitFor('a transactional handler is holding its transaction', () => holding.length === 1);

      const terminated = await count(
        t.pool,
        `SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()`,
      );
      expect(terminated).toBeGreaterThanOrEqual(3); // at least the relay, LISTEN and handler connections
      release();
      for (let i = 5; i < 10; i += 1) ids.push((await outbox.publish(t.pool, TOPIC, { i })).id);

      await waitFor(
        'every message done for both subscriptions',
        async () => (await doneCount(t.pool, ids)) === 2 * ids.length,
      );
      const { rows } = await t.pool.query<{ message_id: string; attempt: number }>(
        `SELECT message_id::text, attempt FROM chaos_effects e WHERE subscription = 'term_tx' ORDER BY e.message_id`,
      );
      expect(rows.map((r) => r.message_id)).toEqual(ids);
      expect(rows[0]).toEqual({ message_id: ids[0], attempt: 2 });
      expect(unhandled).toEqual([]);
      await outbox.stop();
    } finally {
      process.off('uncaughtException', onUnhandled);
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
