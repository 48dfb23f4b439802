import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createOutbox,
  discard,
  type Outbox,
  type OutboxOptions,
  type PublishInput,
  type PurgeResult,
} from '../../src/index.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// Retention of messages (outbox.purge() and the maintenance loop): a message older than retentionMs, fanned out
// by the relay, with nothing pending, delayed, in flight or dead, goes with its finished deliveries, failure rows
// and cancellation; everything else stays. Rows are aged by UPDATE, so no outcome depends on the machine's speed.
// Each describe works in a schema of its own on the file's database.

const DAY_MS = 86_400_000;
const NOTHING: PurgeResult = {
  messages: 0,
  finishedDeliveries: 0,
  failures: 0,
  deadLetters: 0,
  processedKeys: 0,
};

let t: OutboxTestContext;
beforeAll(async () => {
  t = await setupOutboxTest({ poolMax: 30 });
});
afterAll(async () => t.close());

interface Rows {
  messages: number;
  deliveries: number;
  completed: number;
  dead: number;
  failures: number;
  cancellations: number;
  processed: number;
}

/** Row counts of every table retention touches, read in one statement (one snapshot). */
async function rowsIn(schema: string, pool: pg.Pool = t.pool): Promise<Rows> {
  const { rows } = await pool.query<Record<keyof Rows, string>>(
    `SELECT (SELECT count(*) FROM ${schema}.messages) AS messages,
            (SELECT count(*) FROM ${schema}.deliveries) AS deliveries,
            (SELECT count(*) FROM ${schema}.completed_deliveries) AS completed,
            (SELECT count(*) FROM ${schema}.dead_deliveries) AS dead,
            (SELECT count(*) FROM ${schema}.delivery_failures) AS failures,
            (SELECT count(*) FROM ${schema}.cancellations) AS cancellations,
            (SELECT count(*) FROM ${schema}.processed) AS processed`,
  );
  const row = rows[0];
  if (row === undefined) throw new Error('no counts');
  return {
    messages: Number(row.messages),
    deliveries: Number(row.deliveries),
    completed: Number(row.completed),
    dead: Number(row.dead),
    failures: Number(row.failures),
    cancellations: Number(row.cancellations),
    processed: Number(row.processed),
  };
}

/** What a purge must report when it took the table counts from `before` to `after`. */
function removed(before: Rows, after: Rows): PurgeResult {
  return {
    messages: before.messages - after.messages,
    finishedDeliveries: before.completed - after.completed,
    failures: before.failures - after.failures,
    deadLetters: before.dead - after.dead,
    processedKeys: before.processed - after.processed,
  };
}

async function retentionState(schema: string) {
  const { rows } = await t.pool.query<{ removed_through: string | null; messages_removed: string }>(
    `SELECT removed_through::text, messages_removed::text FROM ${schema}.retention_state`,
  );
  return {
    removedThrough: rows[0]?.removed_through ?? null,
    messagesRemoved: Number(rows[0]?.messages_removed),
  };
}

/** Ages messages (all, or those whose payload's `i` is in `is`) by an interval, e.g. '8 days'. */
async function ageMessages(schema: string, interval: string, is?: number[]): Promise<void> {
  await t.pool.query(
    `UPDATE ${schema}.messages SET created_at = created_at - $1::interval
     WHERE $2::int[] IS NULL OR (payload->>'i')::int = ANY ($2::int[])`,
    [interval, is ?? null],
  );
}

/** The payload `i` of every retained message, ascending. */
async function retainedIs(schema: string): Promise<number[]> {
  const { rows } = await t.pool.query<{ i: number }>(
    `SELECT (payload->>'i')::int AS i FROM ${schema}.messages ORDER BY 1`,
  );
  return rows.map((r) => r.i);
}

/** Deliveries of a subscription that have finished: acked, cancelled or dead. */
const finishedOf = (schema: string, subscription: string) =>
  count(
    t.pool,
    `SELECT (SELECT count(*) FROM ${schema}.completed_deliveries c WHERE c.subscription_id = s.id)
          + (SELECT count(*) FROM ${schema}.dead_deliveries x WHERE x.subscription_id = s.id) AS n
     FROM ${schema}.subscriptions s WHERE s.name = $1`,
    [subscription],
  );

/** Pending (not yet finished) deliveries of a subscription. */
const unfinishedOf = (schema: string, subscription: string) =>
  count(
    t.pool,
    `SELECT count(*) AS n FROM ${schema}.deliveries d
     JOIN ${schema}.subscriptions s ON s.id = d.subscription_id WHERE s.name = $1`,
    [subscription],
  );

/**
 * An Outbox that relays and consumes but never cleans up by itself (every retention 0), so that the figures a
 * test's purge() reports are all its own.
 */
function worker(schema: string, overrides: Partial<OutboxOptions> = {}): Outbox {
  return t.outbox({
    schema,
    retentionMs: 0,
    deadLetterRetentionMs: 0,
    processedRetentionMs: 0,
    ...overrides,
    relay: { batchSize: 5_000, pollIntervalMs: 5, vacuum: false, ...overrides.relay },
  });
}

/** Publishes `is.length` messages with payload { i }, `chunk` per publishMany call; topic chosen per i. */
async function publishAll(
  outbox: Outbox,
  is: number[],
  topicOf: (i: number) => string,
  chunk = 5_000,
): Promise<Map<string, number>> {
  const idToI = new Map<string, number>();
  for (let from = 0; from < is.length; from += chunk) {
    const part = is.slice(from, from + chunk);
    const inputs: PublishInput[] = part.map((i) => ({ topic: topicOf(i), payload: { i } }));
    const results = await outbox.publishMany(t.pool, inputs);
    results.forEach((r, n) => idToI.set(r.id, part[n] ?? -1));
  }
  return idToI;
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, n) => from + n);

const timings = process.env.OUTBOX_TEST_TIMINGS !== undefined;

describe('retention with a short setting after 100,000 messages', () => {
  const S = 'purge_scale';
  const N = 100_000;
  // 'paused' matches only p.rare and has no consumer: its 1,000 deliveries stay pending.
  const isRare = (i: number) => i % 100 === 0;
  // 'fast' dead-letters these (10, none rare) and fails these once before acking them (25 bulk, 2 rare).
  const isDead = (i: number) => i % 10_000 === 5_005;
  const isRetried = (i: number) => i % 4_000 === 1_001 || i === 300 || i === 600;
  const all = range(0, N);
  const kept = all.filter((i) => isRare(i) || isDead(i));
  const retried = all.filter(isRetried);
  const dead = all.filter(isDead);
  const rare = all.filter(isRare);

  // The figures follow from the choices above; the tests compare them with the tables as well.
  const expected: PurgeResult = {
    messages: N - kept.length, // 98,990
    finishedDeliveries: N - dead.length - rare.length, // the 'fast' acks of the removed messages: 98,990
    failures: retried.filter((i) => !isRare(i)).length, // 25: one per bulk retry; kept: 2 rare retries, 10 dead
    deadLetters: 0,
    processedKeys: 3,
  };
  let before: Rows;
  let newestRemoved: string;
  let dryRun: PurgeResult | undefined;

  beforeAll(async () => {
    const producer = worker(S);
    await producer.migrate();
    await producer.declareSubscription('fast', { topics: ['p.bulk', 'p.rare'] });
    await producer.declareSubscription('paused', { topics: ['p.rare'] });
    await publishAll(producer, all, (i) => (isRare(i) ? 'p.rare' : 'p.bulk'));

    const fast = worker(S);
    fast.subscribe<{ i: number }>(
      'fast',
      {
        topics: ['p.bulk', 'p.rare'],
        batchSize: 500,
        concurrency: 50,
        pollIntervalMs: 50,
        retry: { minDelayMs: 0 },
      },
      (message) => {
        const { i } = message.payload;
        if (isDead(i)) return Promise.reject(discard('chosen to die'));
        if (isRetried(i) && message.attempt === 1) return Promise.reject(new Error('first attempt fails'));
        return Promise.resolve();
      },
    );
    const startedAt = performance.now();
    await fast.start();
    await waitFor(
      'fast finished every delivery',
      async () => (await finishedOf(S, 'fast')) === N,
      100_000,
      200,
    );
    if (timings) console.log(`consumed ${N} in ${Math.round(performance.now() - startedAt)} ms`);
    const status = await fast.status();
    await fast.stop();
    expect(status.relay.backlog).toBe(0);
    expect(status.subscriptions.find((s) => s.name === 'fast')).toMatchObject({
      pending: 0,
      delayed: 0,
      inFlight: 0,
    });
    expect(status.subscriptions.find((s) => s.name === 'paused')).toMatchObject({ pending: rare.length });

    for (const key of ['a', 'b', 'c']) await producer.once(t.pool, 'purge', key, () => Promise.resolve());
    await producer.once(t.pool, 'purge', 'fresh', () => Promise.resolve());
    await t.pool.query(
      `UPDATE ${S}.processed SET recorded_at = now() - interval '40 days' WHERE key <> 'fresh'`,
    );
    await ageMessages(S, '8 days');
    await t.pool.query(
      `UPDATE ${S}.completed_deliveries SET completed_at = completed_at - interval '8 days'`,
    );

    before = await rowsIn(S);
    const { rows } = await t.pool.query<{ newest: string }>(
      `SELECT max(created_at)::text AS newest FROM ${S}.messages WHERE NOT ((payload->>'i')::int = ANY ($1::int[]))`,
      [kept],
    );
    newestRemoved = rows[0]?.newest ?? '';
  }, 120_000);

  it('holds the work the consumers left: 100,000 messages, 1,000 pending for paused, 10 dead, 37 failures', () => {
    expect(before).toEqual({
      messages: N,
      deliveries: rare.length,
      completed: N - dead.length,
      dead: dead.length,
      failures: retried.length + dead.length,
      cancellations: 0,
      processed: 4,
    });
  });

  it('a dry run reports what the purge will remove and removes nothing', async () => {
    const purger = t.outbox({ schema: S, retentionMs: 7 * DAY_MS });
    dryRun = await purger.purge({ dryRun: true });
    expect(dryRun).toEqual(expected);
    expect(await rowsIn(S)).toEqual(before);
    expect(await retentionState(S)).toEqual({ removedThrough: null, messagesRemoved: 0 });
  });

  it('removes every finished message with its deliveries and failures and keeps all unfinished work', async () => {
    const purger = t.outbox({ schema: S, retentionMs: 7 * DAY_MS });
    const startedAt = performance.now();
    const result = await purger.purge();
    const ms = performance.now() - startedAt;
    if (timings) {
      const rows = result.messages + result.finishedDeliveries + result.failures;
      console.log(`purge of ${result.messages} messages (${rows} rows) took ${Math.round(ms)} ms`);
    }
    const after = await rowsIn(S);

    expect(result).toEqual(expected);
    expect(result).toEqual(removed(before, after));
    if (dryRun !== undefined) expect(result).toEqual(dryRun);
    // Only the unfinished work is left: the messages pending for 'paused' and the dead-lettered ones.
    expect(await retainedIs(S)).toEqual(kept);
    expect(after).toEqual({
      messages: kept.length,
      deliveries: rare.length, // 'paused', untouched
      completed: rare.length, // the 'fast' acks of the rare messages, which stay with them
      dead: dead.length,
      failures: retried.filter(isRare).length + dead.length,
      cancellations: 0,
      processed: 1,
    });
    const { rows: orphans } = await t.pool.query(
      `SELECT 'completed' AS t, message_id FROM ${S}.completed_deliveries
       WHERE message_id NOT IN (SELECT id FROM ${S}.messages)
       UNION ALL
       SELECT 'failure', message_id FROM ${S}.delivery_failures WHERE message_id NOT IN (SELECT id FROM ${S}.messages)
       UNION ALL
       SELECT 'pending', message_id FROM ${S}.deliveries WHERE message_id NOT IN (SELECT id FROM ${S}.messages)
       UNION ALL
       SELECT 'dead', message_id FROM ${S}.dead_deliveries WHERE message_id NOT IN (SELECT id FROM ${S}.messages)`,
    );
    expect(orphans).toEqual([]);
    expect(await retentionState(S)).toEqual({
      removedThrough: newestRemoved,
      messagesRemoved: expected.messages,
    });
    // A replay from before what retention removed is refused rather than re-delivering only the rest.
    await expect(purger.replay('fast', { since: new Date(Date.now() - 9 * DAY_MS) })).rejects.toMatchObject({
      code: 'OUTBOX_REPLAY_BEYOND_RETENTION',
    });
  });

  it('removes nothing on a second purge', async () => {
    const atStart = await rowsIn(S);
    expect(await t.outbox({ schema: S, retentionMs: 7 * DAY_MS }).purge()).toEqual(NOTHING);
    expect(await rowsIn(S)).toEqual(atStart);
  });

  it('still delivers every kept message to paused, payload intact', async () => {
    const seen = new Map<number, number>();
    const consumer = worker(S);
    consumer.subscribe<{ i: number }>(
      'paused',
      { topics: ['p.rare'], batchSize: 500, pollIntervalMs: 50 },
      (m) => {
        seen.set(m.payload.i, (seen.get(m.payload.i) ?? 0) + 1);
        return Promise.resolve();
      },
    );
    await consumer.start();
    await waitFor('paused handled its 1,000', () => seen.size === rare.length, 30_000, 50);
    await waitFor('paused acked its 1,000', async () => (await unfinishedOf(S, 'paused')) === 0, 30_000, 50);
    await consumer.stop();
    expect([...seen.keys()].sort((a, b) => a - b)).toEqual(rare);
    expect([...seen.values()].every((n) => n === 1)).toBe(true);
  });
});

describe('what retention keeps', () => {
  const S = 'purge_age';
  const handled = new Set<number>();

  beforeAll(async () => {
    const w = worker(S);
    await w.migrate();
    await w.declareSubscription('age-idle', { topics: ['age.cancel'] });
    w.subscribe<{ i: number }>('age', { topics: ['age.done'], pollIntervalMs: 20 }, (m) => {
      handled.add(m.payload.i);
      return Promise.resolve();
    });
    await w.start();
    await publishAll(w, range(0, 6), () => 'age.done');
    await waitFor('age acked 6', async () => (await finishedOf(S, 'age')) === 6);
    const [cancelled] = await publishAll(w, [6], () => 'age.cancel');
    await waitFor('the relay fanned out message 6', async () => (await unfinishedOf(S, 'age-idle')) === 1);
    expect(await w.cancel(t.pool, cancelled?.[0] ?? '0')).toEqual({ cancelled: 1 });
    await w.stop();
  });

  it('keeps messages younger than the retention and one the relay has not fanned out, however old', async () => {
    // Published while no relay runs: no delivery exists yet, and none may be lost by removing the message.
    const noRelay = t.outbox({ schema: S, relay: { enabled: false } });
    const [, , , cancelled] = await publishAll(noRelay, [7, 8, 9, 10], () => 'age.done');
    // Cancelled before the relay saw it: it never gets a delivery.
    expect(await noRelay.cancel(t.pool, cancelled?.[0] ?? '0')).toEqual({ cancelled: 0 });
    await ageMessages(S, '8 days', [0, 1, 2, 6]);
    await ageMessages(S, '6 days', [3, 4, 5]);
    await ageMessages(S, '30 days', [7, 8, 9, 10]);
    const before = await rowsIn(S);
    expect(before).toMatchObject({ messages: 11, completed: 7, deliveries: 0, cancellations: 2 });

    const result = await noRelay.purge();
    // 0, 1, 2 with their acks, and 6 with its cancelled delivery and its cancellation.
    expect(result).toEqual({ ...NOTHING, messages: 4, finishedDeliveries: 4 });
    const after = await rowsIn(S);
    expect(result).toEqual(removed(before, after));
    expect(after.cancellations).toBe(1);
    expect(await retainedIs(S)).toEqual([3, 4, 5, 7, 8, 9, 10]);

    // Once relayed and handled, the old unrelayed messages go too, and the cancelled one with its cancellation.
    const relay = worker(S);
    relay.subscribe<{ i: number }>('age', { topics: ['age.done'], pollIntervalMs: 20 }, (m) => {
      handled.add(m.payload.i);
      return Promise.resolve();
    });
    await relay.start();
    // The acks of 3, 4 and 5, and now those of 7, 8 and 9.
    await waitFor('age acked 7, 8 and 9', async () => (await finishedOf(S, 'age')) === 6);
    await relay.stop();
    expect([...handled].sort((a, b) => a - b)).toEqual(range(0, 10).filter((i) => i !== 6));
    expect(await noRelay.purge()).toEqual({ ...NOTHING, messages: 4, finishedDeliveries: 3 });
    expect(await retainedIs(S)).toEqual([3, 4, 5]);
    expect((await rowsIn(S)).cancellations).toBe(0);
  });

  it('keeps a message whose delivery is in flight or delayed, and removes one no subscription wanted', async () => {
    const w = worker(S);
    await w.declareSubscription('age-later', { topics: ['age.later'] });
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    let entered = false;
    w.subscribe('age-slow', { topics: ['age.slow'], pollIntervalMs: 20 }, async () => {
      entered = true;
      await gate;
    });
    await w.start();
    await w.publish(t.pool, 'age.slow', { i: 20 });
    await w.publish(t.pool, 'age.later', { i: 21 }, { delayMs: DAY_MS });
    await w.publish(t.pool, 'age.nobody', { i: 22 });
    await waitFor('the handler of 20 runs', () => entered);
    await waitFor('the relay fanned out 21 and 22', async () => (await w.status()).relay.backlog === 0);
    expect(await unfinishedOf(S, 'age-later')).toBe(1);
    await ageMessages(S, '8 days', [20, 21, 22]);

    const purger = t.outbox({ schema: S });
    expect(await purger.purge()).toEqual({ ...NOTHING, messages: 1 });
    expect(await retainedIs(S)).toEqual([3, 4, 5, 20, 21]);

    release();
    await waitFor('age-slow acked 20', async () => (await finishedOf(S, 'age-slow')) === 1);
    await w.stop();
    expect(await purger.purge()).toEqual({ ...NOTHING, messages: 1, finishedDeliveries: 1 });
    expect(await retainedIs(S)).toEqual([3, 4, 5, 21]);
  });
});

describe('a run of kept messages longer than a batch', () => {
  it('steps over 6,000 messages that still have work and removes the finished ones after them', async () => {
    const S = 'purge_run';
    const w = worker(S);
    await w.migrate();
    await w.declareSubscription('run-hold', { topics: ['run.hold'] });
    w.subscribe('run', { topics: ['run.done'], pollIntervalMs: 20 }, () => Promise.resolve());
    await w.start();
    // The first 6,000 ids (more than one batch of 5,000) all stay pending for run-hold.
    await publishAll(w, range(0, 6_000), () => 'run.hold');
    await publishAll(w, range(6_000, 6_020), () => 'run.done');
    await waitFor('run acked 20', async () => (await finishedOf(S, 'run')) === 20);
    await waitFor('run-hold has 6,000 pending', async () => (await unfinishedOf(S, 'run-hold')) === 6_000);
    await w.stop();
    await ageMessages(S, '8 days');
    const purger = t.outbox({ schema: S });
    const counted = await purger.purge({ dryRun: true });
    expect(await purger.purge()).toEqual({ ...NOTHING, messages: 20, finishedDeliveries: 20 });
    expect(counted).toEqual({ ...NOTHING, messages: 20, finishedDeliveries: 20 });
    expect(await rowsIn(S)).toMatchObject({ messages: 6_000, deliveries: 6_000, completed: 0 });
  });
});

describe('retention of dead-lettered messages', () => {
  const S = 'purge_dead';
  let purger: Outbox;

  /** Sets when the dead letter of message `i` died, to `ageDays` ago. */
  const deadSince = (i: number, ageDays: number) =>
    t.pool.query(
      `UPDATE ${S}.dead_deliveries x SET dead_at = now() - $2::int * interval '1 day'
       FROM ${S}.messages m WHERE m.id = x.message_id AND (m.payload->>'i')::int = $1`,
      [i, ageDays],
    );

  beforeAll(async () => {
    const w = worker(S);
    await w.migrate();
    w.subscribe('dl', { topics: ['dl.x'], pollIntervalMs: 20 }, () => Promise.reject(discard('never')));
    await w.start();
    await publishAll(w, [0, 1], () => 'dl.x');
    await waitFor('both dead', async () => (await finishedOf(S, 'dl')) === 2);
    await w.stop();
    await ageMessages(S, '8 days');
    purger = t.outbox({ schema: S }); // retentionMs 7 days, deadLetterRetentionMs 30 days
  });

  it('keeps a message whose dead letter is younger than deadLetterRetentionMs', async () => {
    expect(await purger.purge()).toEqual(NOTHING);
    await deadSince(0, 29);
    expect(await purger.purge({ dryRun: true })).toEqual(NOTHING);
    expect(await purger.purge()).toEqual(NOTHING);
    expect(await retainedIs(S)).toEqual([0, 1]);
  });

  // The real pass deletes the expired dead letters first, then the messages they held: the dry run counts those too.
  it('counts, in a dry run, the expired dead letter and the message the purge then removes with it', async () => {
    await deadSince(0, 31);
    const before = await rowsIn(S);
    expect(await purger.purge({ dryRun: true })).toEqual({
      ...NOTHING,
      deadLetters: 1,
      messages: 1,
      failures: 1,
    });
    expect(await rowsIn(S)).toEqual(before);
  });

  it('removes the expired dead letter and then its message with its failure row, in one purge', async () => {
    await deadSince(0, 31);
    const before = await rowsIn(S);
    const result = await purger.purge();
    expect(result).toEqual({ ...NOTHING, deadLetters: 1, messages: 1, failures: 1 });
    expect(result).toEqual(removed(before, await rowsIn(S)));
    expect(await retainedIs(S)).toEqual([1]);
    expect(await purger.deadLetters('dl')).toHaveLength(1);
  });

  it('keeps a dead letter and its message forever with deadLetterRetentionMs 0', async () => {
    await deadSince(1, 3_000);
    expect(await t.outbox({ schema: S, deadLetterRetentionMs: 0 }).purge()).toEqual(NOTHING);
    expect(await retainedIs(S)).toEqual([1]);
  });
});

describe('purges running at once', () => {
  it('two Outboxes on two pools purging 50,000 expired messages at once remove each exactly once', async () => {
    const S = 'purge_race';
    const N = 50_000;
    const isHeld = (i: number) => i % 100 === 0;
    const w = worker(S);
    await w.migrate();
    await w.declareSubscription('hold', { topics: ['race.hold'] });
    w.subscribe('race', { topics: ['race.#'], batchSize: 500, concurrency: 50, pollIntervalMs: 50 }, () =>
      Promise.resolve(),
    );
    await w.start();
    await publishAll(w, range(0, N), (i) => (isHeld(i) ? 'race.hold' : 'race.bulk'));
    await waitFor('race acked every delivery', async () => (await finishedOf(S, 'race')) === N, 60_000, 200);
    await w.stop();
    await ageMessages(S, '8 days');
    const held = range(0, N).filter(isHeld);
    const before = await rowsIn(S);
    const { rows } = await t.pool.query<{ newest: string }>(
      `SELECT max(created_at)::text AS newest FROM ${S}.messages WHERE topic <> 'race.hold'`,
    );

    const pool2 = new pg.Pool({ connectionString: t.db.url, max: 5 });
    try {
      const a = t.outbox({ schema: S });
      const b = createOutbox({ pool: pool2, schema: S, logger: testLogger });
      const [ra, rb] = await Promise.all([a.purge(), b.purge()]);
      const after = await rowsIn(S);
      const sum: PurgeResult = {
        messages: ra.messages + rb.messages,
        finishedDeliveries: ra.finishedDeliveries + rb.finishedDeliveries,
        failures: ra.failures + rb.failures,
        deadLetters: ra.deadLetters + rb.deadLetters,
        processedKeys: ra.processedKeys + rb.processedKeys,
      };
      expect(sum).toEqual({ ...NOTHING, messages: N - held.length, finishedDeliveries: N - held.length });
      expect(sum).toEqual(removed(before, after));
      expect(await retainedIs(S)).toEqual(held);
      expect(after).toMatchObject({ deliveries: held.length, completed: held.length });
      expect(await retentionState(S)).toEqual({
        removedThrough: rows[0]?.newest,
        messagesRemoved: N - held.length,
      });
      expect(await Promise.all([a.purge(), b.purge()])).toEqual([NOTHING, NOTHING]);
    } finally {
      await pool2.end();
    }
  });

  it('loses nothing pending while purges with a 1 ms retention run beside a busy relay and consumer', async () => {
    const S = 'purge_live';
    const N = 6_000;
    const isHeld = (i: number) => i % 30 === 0;
    const w = worker(S);
    await w.migrate();
    await w.declareSubscription('live-hold', { topics: ['live.hold'] });
    const handled = new Map<number, number>();
    const errors: unknown[] = [];
    w.on('error', (error) => errors.push(error));
    w.subscribe<{ i: number }>('live', { topics: ['live.done'], batchSize: 100, pollIntervalMs: 20 }, (m) => {
      handled.set(m.payload.i, (handled.get(m.payload.i) ?? 0) + 1);
      return Promise.resolve();
    });
    await w.start();

    const pool2 = new pg.Pool({ connectionString: t.db.url, max: 5 });
    const late = await t.pool.connect();
    try {
      // Published first and committed last: the oldest message, with a low id, invisible to the relay for a while.
      await late.query('BEGIN');
      await w.publish(late, 'live.done', { i: N + 1 });
      // Everything finished is due at once: the purges race the relay's fan-out and the consumer's acks.
      const [a, b] = [
        t.outbox({ schema: S, retentionMs: 1 }),
        createOutbox({ pool: pool2, schema: S, logger: testLogger, retentionMs: 1 }),
      ];
      let publishing = true;
      const totals: PurgeResult[] = [];
      const loops = [a, b].map(async (purger) => {
        while (publishing) totals.push(await purger.purge());
      });
      await publishAll(w, range(0, N), (i) => (isHeld(i) ? 'live.hold' : 'live.done'), 25);
      await waitFor('purges ran while the transaction was open', () => totals.length >= 10);
      await late.query('COMMIT');
      const toHandle = [...range(0, N).filter((i) => !isHeld(i)), N + 1];
      await waitFor('live handled every message', () => handled.size === toHandle.length, 30_000, 20);
      await waitFor(
        'live acked every delivery',
        async () => (await unfinishedOf(S, 'live')) === 0,
        30_000,
        20,
      );
      publishing = false;
      await Promise.all(loops);
      await w.stop();
      totals.push(await a.purge());

      expect(errors).toEqual([]);
      expect([...handled.keys()].sort((x, y) => x - y)).toEqual(toHandle);
      expect([...handled.values()].every((n) => n === 1)).toBe(true);
      expect(totals.reduce((n, r) => n + r.messages, 0)).toBe(toHandle.length);
      expect(totals.reduce((n, r) => n + r.finishedDeliveries, 0)).toBe(toHandle.length);
      const held = range(0, N).filter(isHeld);
      expect(await retainedIs(S)).toEqual(held);
      expect(await unfinishedOf(S, 'live-hold')).toBe(held.length);
      expect(await rowsIn(S)).toMatchObject({ messages: held.length, deliveries: held.length, completed: 0 });
      expect((await retentionState(S)).messagesRemoved).toBe(toHandle.length);
    } finally {
      late.release();
      await pool2.end();
    }
  });
});

describe('the maintenance loop', () => {
  it('removes aged messages by itself while the relay leads, and keeps the unfinished ones', async () => {
    const S = 'purge_loop';
    const w = t.outbox({ schema: S, retentionMs: 60_000, relay: { maintenanceIntervalMs: 100 } });
    await w.migrate();
    await w.declareSubscription('loop-idle', { topics: ['loop.keep'] });
    w.subscribe('loop', { topics: ['loop.done'], pollIntervalMs: 20 }, () => Promise.resolve());
    await w.start();
    await publishAll(w, range(0, 22), (i) => (i < 20 ? 'loop.done' : 'loop.keep'));
    await waitFor('loop acked 20', async () => (await finishedOf(S, 'loop')) === 20);
    await waitFor('loop-idle has 2 pending', async () => (await unfinishedOf(S, 'loop-idle')) === 2);
    expect(await retainedIs(S)).toEqual(range(0, 22));

    await ageMessages(S, '2 minutes');
    await waitFor('the loop removed the 20 finished messages', async () => (await rowsIn(S)).messages === 2);
    expect(await retainedIs(S)).toEqual([20, 21]);
    expect(await rowsIn(S)).toMatchObject({ deliveries: 2, completed: 0 });
    expect((await retentionState(S)).messagesRemoved).toBe(20);
    await w.stop();
  });
});

describe('retentionMs settings', () => {
  const S = 'purge_zero';

  it('keeps everything with retentionMs 0', async () => {
    const w = worker(S);
    await w.migrate();
    w.subscribe('zero', { topics: ['zero.x'], pollIntervalMs: 20 }, () => Promise.resolve());
    await w.start();
    await publishAll(w, range(0, 5), () => 'zero.x');
    await waitFor('zero acked 5', async () => (await finishedOf(S, 'zero')) === 5);
    await w.stop();
    await ageMessages(S, '4000 days');
    const before = await rowsIn(S);
    const purger = t.outbox({ schema: S, retentionMs: 0 });
    expect(await purger.purge({ dryRun: true })).toEqual(NOTHING);
    expect(await purger.purge()).toEqual(NOTHING);
    expect(await rowsIn(S)).toEqual(before);
    expect(before).toMatchObject({ messages: 5, completed: 5 });
  });

  it('rejects a retentionMs that is not a whole number of milliseconds from 0 to 3650 days', () => {
    for (const value of [-1, 1.5, 'x', '1000', null, Number.NaN, Infinity, 3650 * DAY_MS + 1]) {
      expect(() => createOutbox({ pool: t.pool, schema: S, retentionMs: value as number })).toThrow(
        expect.objectContaining({ name: 'OutboxError', code: 'OUTBOX_INVALID_OPTION', value }) as Error,
      );
    }
  });

  it('rejects a dryRun that is not a boolean', async () => {
    const purger = t.outbox({ schema: S });
    await expect((async () => purger.purge({ dryRun: 'yes' as unknown as boolean }))()).rejects.toMatchObject(
      {
        code: 'OUTBOX_INVALID_OPTION',
        value: 'yes',
      },
    );
  });
});
