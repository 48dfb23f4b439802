import { Writable } from 'node:stream';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox } from '../../src/index.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/** A debug-level pino logger whose records the test reads. */
function recordingLogger() {
  const records: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') records.push(JSON.parse(line) as Record<string, unknown>);
      }
      callback();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), records };
}

describe('start and stop', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('starts on a second start() after the first one failed on a declaration', async () => {
    const pool = new pg.Pool({ connectionString: t.db.url, max: 5 });
    try {
      const outbox = createOutbox({ pool, logger: testLogger });
      await outbox.declareSubscription('retry-start', { topics: ['retry.start'], ordered: true });
      const handled: string[] = [];
      outbox.subscribe('retry-start', { topics: ['retry.start'], ordered: false }, (m) => {
        handled.push(m.id);
      });
      await expect(outbox.start()).rejects.toMatchObject({ code: 'OUTBOX_SUBSCRIPTION_CONFLICT' });
      expect(pool.listenerCount('error')).toBe(0);
      await outbox.declareSubscription('retry-start', { topics: ['retry.start'], ordered: false });
      await outbox.start();
      const { id } = await outbox.publish(pool, 'retry.start', { n: 1 });
      await waitFor('the consumer of the retried start to handle a message', () => handled.includes(id));
      await outbox.stop();
    } finally {
      await pool.end();
    }
  });

  it('shares one start between concurrent start() calls, with one pool error listener', async () => {
    const pool = new pg.Pool({ connectionString: t.db.url, max: 5 });
    try {
      const outbox = createOutbox({ pool, logger: testLogger });
      outbox.subscribe('shared-start', { topics: ['shared.start'] }, () => undefined);
      await Promise.all([outbox.start(), outbox.start(), outbox.start()]);
      expect(pool.listenerCount('error')).toBe(1);
      await Promise.all([outbox.stop(), outbox.stop()]);
      expect(pool.listenerCount('error')).toBe(0);
      await outbox.start();
      expect(pool.listenerCount('error')).toBe(1);
      await outbox.stop();
      expect(pool.listenerCount('error')).toBe(0);
    } finally {
      await pool.end();
    }
  });

  it('does not run a consumer whose subscribe() came just before stop(), when its declaration ends after', async () => {
    const { logger, records } = recordingLogger();
    const outbox = t.outbox({ logger });
    await outbox.declareSubscription('racing', { topics: ['race.test'] });
    await outbox.start();
    const { id } = await outbox.publish(t.pool, 'race.test', { n: 1 });
    await waitFor(
      'the relay to fan the message out',
      async () =>
        (await count(t.pool, `SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1`, [id])) ===
        1,
    );
    let handled = 0;
    // An uncommitted transaction holds the subscription's row lock, so the declaration of subscribe() waits.
    const blocker = await t.pool.connect();
    let stopped: Promise<void> | undefined;
    try {
      await blocker.query('BEGIN');
      await blocker.query(`SELECT 1 FROM outbox.subscriptions WHERE name = 'racing' FOR UPDATE`);
      outbox.subscribe('racing', { topics: ['race.test', 'race.more'], pollIntervalMs: 50 }, () => {
        handled += 1;
      });
      await waitFor('the declaration to wait for the blocker', async () => {
        const { rows } = await t.pool.query(
          `SELECT 1 FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%subscriptions%'`,
        );
        return rows.length > 0;
      });
      stopped = outbox.stop();
    } finally {
      await blocker.query('ROLLBACK');
      blocker.release();
    }
    await stopped;
    // Either the consumer ran (the bug) or the Outbox decided, after the declaration, not to start it.
    await waitFor(
      'the declaration to end',
      () =>
        handled > 0 || records.some((r) => r.msg === 'consumer not started: the outbox stopped meanwhile'),
    );
    expect(handled).toBe(0);
    const { rows } = await t.pool.query<{ attempt: number }>(
      `SELECT attempt FROM outbox.deliveries WHERE message_id = $1`,
      [id],
    );
    expect(rows).toEqual([{ attempt: 0 }]);
  });
});

describe('pool sizing and leases', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
    await t.pool.query('CREATE TABLE long_tx_effects (message_id text NOT NULL)');
  });
  afterAll(async () => t.close());

  const completed = (name: string) =>
    count(
      t.pool,
      `SELECT count(*) AS n FROM outbox.completed_deliveries c
       JOIN outbox.subscriptions s ON s.id = c.subscription_id WHERE s.name = $1`,
      [name],
    );

  it('warns with the numbers when the transactional concurrency of an Outbox reaches the pool max', async () => {
    const { logger, records } = recordingLogger();
    const pool = new pg.Pool({ connectionString: t.db.url }); // pg's default max: 10
    const warnings = () => records.filter((r) => r.level === 40 && 'transactionalConcurrency' in r);
    try {
      const outbox = createOutbox({ pool, logger });
      outbox.subscribe(
        'sized-a',
        { topics: ['sized.a'], mode: 'transactional', concurrency: 6 },
        () => undefined,
      );
      outbox.subscribe('sized-lease', { topics: ['sized.lease'], concurrency: 50 }, () => undefined);
      await outbox.start();
      expect(warnings()).toEqual([]);
      outbox.subscribe(
        'sized-b',
        { topics: ['sized.b'], mode: 'transactional', concurrency: 4 },
        () => undefined,
      );
      const [warning] = await waitFor('the pool sizing warning', () => warnings().length > 0 && warnings());
      expect(warning).toMatchObject({ poolMax: 10, transactionalConcurrency: 10, suggestedPoolMax: 16 });
      expect(warning?.msg).toContain('raise the pool max');
      await outbox.stop();
    } finally {
      await pool.end();
    }
  });

  it('keeps the lease of a long lease-mode handler while transactional handlers hold every pool connection', async () => {
    // Room for the first heartbeat, which opens the side connection, on a busy machine.
    const leaseMs = 1_000;
    const pool = new pg.Pool({ connectionString: t.db.url, max: 3 });
    const a = createOutbox({ pool, logger: testLogger, shutdownTimeoutMs: 2_000 });
    // Another process: its own pool.
    const b = t.outbox({ relay: { enabled: false } });
    try {
      let txRunning = 0;
      let releaseTx = false;
      a.subscribe(
        'starve-tx',
        { topics: ['starve.tx'], mode: 'transactional', concurrency: 3, batchSize: 3 },
        async () => {
          txRunning += 1;
          await waitFor('the test to release the handler transactions', () => releaseTx, 30_000);
        },
      );
      let leaseStarted = false;
      let fullSince = 0;
      const options = { topics: ['starve.lease'], leaseMs, pollIntervalMs: 50 };
      a.subscribe('starve-lease', options, async () => {
        leaseStarted = true;
        await waitFor(
          'three leases with every pool connection held',
          () => fullSince > 0 && Date.now() >= fullSince + 3 * leaseMs,
          30_000,
        );
        releaseTx = true;
        // Still running (and heartbeating) until the pool is free again, so the ack does not wait for it.
        await waitFor('the handler transactions to commit', async () => (await completed('starve-tx')) === 3);
      });
      const seenByB: string[] = [];
      b.subscribe('starve-lease', options, (m) => {
        seenByB.push(m.id);
      });
      await a.start();
      const { id } = await a.publish(t.pool, 'starve.lease', { slow: true });
      await waitFor('the lease-mode handler to start', () => leaseStarted);
      await b.start();
      await a.publishMany(
        t.pool,
        [1, 2, 3].map((n) => ({ topic: 'starve.tx', payload: { n } })),
      );
      await waitFor(
        'three handler transactions to hold every pool connection',
        () => txRunning === 3 && pool.totalCount === 3 && pool.idleCount === 0,
      );
      fullSince = Date.now();
      await waitFor(
        'the lease-mode delivery to be acked',
        async () => (await completed('starve-lease')) === 1,
      );
      expect(seenByB).toEqual([]);
      const { rows } = await t.pool.query<{ attempt: number }>(
        `SELECT attempt FROM outbox.completed_deliveries WHERE message_id = $1`,
        [id],
      );
      expect(rows).toEqual([{ attempt: 1 }]);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
      await pool.end();
    }
  });

  it('extends leases on a new side connection after the old one was terminated', async () => {
    // Room for the first heartbeat, which opens the side connection, on a busy machine.
    const leaseMs = 1_000;
    const a = t.outbox();
    const b = t.outbox({ relay: { enabled: false } });
    const options = { topics: ['side.lost'], leaseMs, pollIntervalMs: 50 };
    let started = false;
    let killedAt = 0;
    a.subscribe('side-lost', options, async () => {
      started = true;
      await waitFor(
        'three leases after the kill',
        () => killedAt > 0 && Date.now() >= killedAt + 3 * leaseMs,
        30_000,
      );
    });
    const seenByB: string[] = [];
    b.subscribe('side-lost', options, (m) => {
      seenByB.push(m.id);
    });
    await a.start();
    const { id } = await a.publish(t.pool, 'side.lost', { slow: true });
    await waitFor('the handler to start', () => started);
    await b.start();
    // The backend whose last statement was a lease extension.
    const extender = async () => {
      const { rows } = await t.pool.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE '%SET available_at = now() +%' AND pid <> pg_backend_pid()`,
      );
      return rows[0]?.pid;
    };
    const first = await waitFor('a lease extension', extender);
    await t.pool.query('SELECT pg_terminate_backend($1)', [first]);
    killedAt = Date.now();
    await waitFor('a lease extension on a new connection', async () => {
      const pid = await extender();
      return pid !== undefined && pid !== first;
    });
    await waitFor('the delivery to be acked', async () => (await completed('side-lost')) === 1);
    expect(seenByB).toEqual([]);
    const { rows } = await t.pool.query<{ attempt: number }>(
      `SELECT attempt FROM outbox.completed_deliveries WHERE message_id = $1`,
      [id],
    );
    expect(rows).toEqual([{ attempt: 1 }]);
    await Promise.all([a.stop(), b.stop()]);
  });

  it('lets a transactional handler that outlives leaseMs and honours ctx.signal commit its work once', async () => {
    const leaseMs = 300;
    const a = t.outbox();
    const b = t.outbox({ relay: { enabled: false } });
    const options = {
      topics: ['long.tx'],
      mode: 'transactional' as const,
      leaseMs,
      pollIntervalMs: 50,
      maxAttempts: 3,
      retry: { minDelayMs: 0, maxDelayMs: 10 },
    };
    let runs = 0;
    let dead = 0;
    const handler = async (m: { id: string }, ctx: { signal: AbortSignal; tx: pg.PoolClient }) => {
      runs += 1;
      // Four leases: the claim's lease ended long before; the row lock of the transaction still protects it.
      const until = Date.now() + 4 * leaseMs;
      await waitFor('four leases to pass', () => Date.now() >= until);
      ctx.signal.throwIfAborted();
      await ctx.tx.query('INSERT INTO long_tx_effects (message_id) VALUES ($1)', [m.id]);
    };
    for (const o of [a, b]) {
      o.subscribe('long-tx', options, handler);
      o.on('delivery:dead', () => (dead += 1));
    }
    await a.start();
    await b.start();
    const { id } = await a.publish(t.pool, 'long.tx', { slow: true });
    const effects = () =>
      count(t.pool, 'SELECT count(*) AS n FROM long_tx_effects WHERE message_id = $1', [id]);
    await waitFor(
      'the work to commit, or the delivery to die',
      async () => (await effects()) > 0 || dead > 0,
    );
    await waitFor('the ack', async () => (await completed('long-tx')) === 1 || dead > 0);
    expect(dead).toBe(0);
    expect(await effects()).toBe(1);
    expect(runs).toBe(1);
    const { rows } = await t.pool.query<{ attempt: number }>(
      `SELECT attempt FROM outbox.completed_deliveries WHERE message_id = $1`,
      [id],
    );
    expect(rows).toEqual([{ attempt: 1 }]);
    await Promise.all([a.stop(), b.stop()]);
  });
});
