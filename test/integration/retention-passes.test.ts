import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgExecutor } from '../../src/db/executor.js';
import { schemaName } from '../../src/db/identifiers.js';
import type { Outbox, PublishInput } from '../../src/index.js';
import { runCleanupPass, type CleanupPass } from '../../src/maintenance.js';
import { startPosition, SWEEP_EVERY, type MessagePosition } from '../../src/message-position.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// The maintenance loop's passes over the messages, driven one by one as the loop runs them (runCleanupPass with the
// position the last pass returned). An ordinary pass reads only what came after the frontier; every SWEEP_EVERY-th
// pass re-reads the kept messages below it. Rows are aged by UPDATE; each pass's `scanned` counts the message rows it
// read. Each describe works in a schema of its own.

const DAY_MS = 86_400_000;
const RETENTION = { processedRetentionMs: 0, deadLetterRetentionMs: 0, retentionMs: 7 * DAY_MS };
const BOUNDS = { maxBatches: 20, stop: () => false };

let t: OutboxTestContext;
let client: pg.Client;
beforeAll(async () => {
  t = await setupOutboxTest();
  // The passes' own connection (their batches are transactions), as the loop's withStatementTimeout lends one.
  client = new pg.Client({ connectionString: t.db.url });
  await client.connect();
});
afterAll(async () => {
  await client.end();
  await t.close();
});

/** An Outbox of `schema` that relays and consumes but never cleans up by itself. */
const worker = (schema: string) =>
  t.outbox({ schema, retentionMs: 0, relay: { pollIntervalMs: 5, batchSize: 5_000, vacuum: false } });

/** Runs passes from `position` as the maintenance loop does; returns each pass. */
async function passes(schema: string, position: MessagePosition, n: number): Promise<CleanupPass[]> {
  const done: CleanupPass[] = [];
  let at = position;
  for (let i = 0; i < n; i++) {
    const pass = await runCleanupPass(pgExecutor(client), schemaName(schema), RETENTION, BOUNDS, at);
    expect(pass.more).toBe(false);
    done.push(pass);
    at = pass.position;
  }
  return done;
}

async function publishAll(outbox: Outbox, topic: string, n: number, db: pg.PoolClient | pg.Pool = t.pool) {
  const ids: string[] = [];
  for (let from = 0; from < n; from += 5_000) {
    const inputs: PublishInput[] = Array.from({ length: Math.min(5_000, n - from) }, (_, i) => ({
      topic,
      payload: { i: from + i },
    }));
    ids.push(...(await outbox.publishMany(db, inputs)).map((r) => r.id));
  }
  return ids;
}

const messages = (schema: string) => count(t.pool, `SELECT count(*) AS n FROM ${schema}.messages`);
const ageAll = (schema: string) =>
  t.pool.query(`UPDATE ${schema}.messages SET created_at = now() - interval '8 days'`);
const unfinished = (schema: string) => count(t.pool, `SELECT count(*) AS n FROM ${schema}.deliveries`);
const acked = (schema: string) => count(t.pool, `SELECT count(*) AS n FROM ${schema}.completed_deliveries`);

/** Waits until the relay fanned out every message and nothing is left for `done` to handle. */
async function settled(schema: string, outbox: Outbox, pending: number): Promise<void> {
  await waitFor(
    'the relay fanned out every message',
    async () => (await outbox.status()).relay.backlog === 0,
  );
  await waitFor(`${pending} deliveries left`, async () => (await unfinished(schema)) === pending, 30_000, 20);
}

describe('passes over 12,000 messages a paused subscription keeps', () => {
  const S = 'passes_kept';
  const KEPT = 12_000;
  let w: Outbox;
  let position: MessagePosition;
  let kept: string[];

  beforeAll(async () => {
    w = worker(S);
    await w.migrate();
    await w.declareSubscription('paused', { topics: ['kept'] });
    w.subscribe('done', { topics: ['done'], batchSize: 500, pollIntervalMs: 10 }, () => Promise.resolve());
    await w.start();
    kept = await publishAll(w, 'kept', KEPT);
    await publishAll(w, 'done', 100);
    await settled(S, w, KEPT);
    await ageAll(S);
  }, 60_000);
  afterAll(async () => w.stop());

  it('reads every message in its first pass, a sweep, and removes the finished ones', async () => {
    const [first] = await passes(S, startPosition(), 1);
    expect(first).toMatchObject({ sweep: true, scanned: KEPT + 100, messages: 100, finishedDeliveries: 100 });
    expect(await messages(S)).toBe(KEPT);
    position = first?.position ?? startPosition();
  });

  it('reads nothing again in the next ordinary pass, and then only the messages that came since', async () => {
    const [second] = await passes(S, position, 1);
    expect(second).toMatchObject({ sweep: false, scanned: 0, messages: 0 });
    await publishAll(w, 'done', 50);
    await settled(S, w, KEPT);
    await ageAll(S);
    const [third] = await passes(S, second?.position ?? position, 1);
    expect(third).toMatchObject({ sweep: false, scanned: 50, messages: 50, finishedDeliveries: 50 });
    expect(await messages(S)).toBe(KEPT);
    position = third?.position ?? position;
  });

  it('removes the kept messages in a sweep within SWEEP_EVERY passes once paused has drained them', async () => {
    const drain = worker(S);
    drain.subscribe('paused', { topics: ['kept'], batchSize: 500, pollIntervalMs: 10 }, () =>
      Promise.resolve(),
    );
    await drain.start();
    await waitFor('paused drained', async () => (await unfinished(S)) === 0, 30_000, 50);
    await drain.stop();

    const run = await passes(S, position, SWEEP_EVERY);
    const sweep = run.findIndex((p) => p.sweep);
    expect(sweep).toBeGreaterThanOrEqual(0);
    // The ordinary passes before it read nothing and removed nothing; the sweep re-read the kept range.
    expect(run.slice(0, sweep).map((p) => [p.scanned, p.messages])).toEqual(
      run.slice(0, sweep).map(() => [0, 0]),
    );
    expect(run[sweep]).toMatchObject({ scanned: KEPT, messages: KEPT, finishedDeliveries: KEPT });
    expect(await messages(S)).toBe(0);
    expect(await acked(S)).toBe(0);
    position = run.at(-1)?.position ?? position;
  });

  it('starts its sweeps after the messages that are gone once no transaction older than a sweep runs', async () => {
    const [last] = kept.slice(-1);
    const run = await passes(S, position, 2 * SWEEP_EVERY);
    expect(run.filter((p) => p.sweep)).toHaveLength(2);
    expect(BigInt(run.at(-1)?.position.lowestKept ?? '0')).toBeGreaterThanOrEqual(BigInt(last ?? '0'));
  });
});

describe('messages a pass must look at again', () => {
  const S = 'passes_again';
  let w: Outbox;
  let position: MessagePosition;

  /** A new worker that relays and acks every 'done' message (an Outbox stopped is not started again). */
  async function startWorker(): Promise<Outbox> {
    const o = worker(S);
    o.subscribe('done', { topics: ['done'], batchSize: 500, pollIntervalMs: 10 }, () => Promise.resolve());
    await o.start();
    return o;
  }

  beforeAll(async () => {
    const setup = worker(S);
    await setup.migrate();
    await setup.declareSubscription('held', { topics: ['held'] });
    w = await startWorker();
    await publishAll(w, 'done', 20);
    await settled(S, w, 0);
    await ageAll(S);
    const [first] = await passes(S, startPosition(), 1);
    expect(first).toMatchObject({ sweep: true, messages: 20 });
    position = first?.position ?? startPosition();
  });
  afterAll(async () => w.stop());

  it('removes a message too young when a pass went by in the next ordinary pass once it is old', async () => {
    const young = await publishAll(w, 'done', 5);
    await settled(S, w, 0);
    const old = await publishAll(w, 'done', 5);
    await settled(S, w, 0);
    await t.pool.query(
      `UPDATE ${S}.messages SET created_at = now() - interval '8 days' WHERE id = ANY ($1)`,
      [old],
    );
    const [pass] = await passes(S, position, 1);
    // The old ones after the young ones go; the frontier stays before the young.
    expect(pass).toMatchObject({ sweep: false, scanned: 10, messages: 5 });
    expect(pass?.position.frontier).toBe((BigInt(young[0] ?? '0') - 1n).toString());
    await ageAll(S);
    const [next] = await passes(S, pass?.position ?? position, 1);
    expect(next).toMatchObject({ sweep: false, scanned: 5, messages: 5 });
    expect(await messages(S)).toBe(0);
    position = next?.position ?? position;
  });

  it('removes a message the relay had not fanned out when a pass went by in the next ordinary pass', async () => {
    await w.stop();
    const [unrelayed] = await publishAll(w, 'done', 1);
    await ageAll(S);
    const [pass] = await passes(S, position, 1);
    expect(pass).toMatchObject({ sweep: false, scanned: 1, messages: 0 });
    expect(pass?.position.frontier).toBe((BigInt(unrelayed ?? '0') - 1n).toString());
    w = await startWorker();
    await waitFor('done acked it', async () => (await acked(S)) === 1);
    const [next] = await passes(S, pass?.position ?? position, 1);
    expect(next).toMatchObject({ sweep: false, scanned: 1, messages: 1 });
    expect(await count(t.pool, `SELECT count(*) AS n FROM ${S}.messages WHERE id = $1`, [unrelayed])).toBe(0);
    position = next?.position ?? position;
  });

  it('removes, in a sweep, a message that committed below the frontier after the passes went by', async () => {
    const late = await t.pool.connect();
    try {
      // Its id is drawn now, below the messages committed after it, which the passes then go past.
      await late.query('BEGIN');
      const [hidden] = await publishAll(w, 'done', 1, late);
      await publishAll(w, 'done', 10);
      // And one kept above them all: the sweeps' lowest message left in place, above the late one.
      await publishAll(w, 'held', 1);
      await waitFor('done acked 10', async () => (await acked(S)) === 10);
      await settled(S, w, 1);
      await ageAll(S);
      // Two sweeps: the second starts after the id was drawn, and finds nothing left below the 10.
      const run = await passes(S, position, 2 * SWEEP_EVERY);
      expect(run.filter((p) => p.sweep)).toHaveLength(2);
      expect(run.reduce((n, p) => n + p.messages, 0)).toBe(10);
      position = run.at(-1)?.position ?? position;
      expect(BigInt(position.frontier)).toBeGreaterThan(BigInt(hidden ?? '0'));
      // The transaction ran through both sweeps: the next may not start above what it can still commit.
      expect(BigInt(position.lowestKept)).toBeLessThan(BigInt(hidden ?? '0'));
      await late.query('COMMIT');
    } finally {
      late.release();
    }
    await waitFor('done acked the late message', async () => (await acked(S)) === 1);
    await ageAll(S);
    const run = await passes(S, position, SWEEP_EVERY);
    const sweep = run.findIndex((p) => p.sweep);
    expect(run.map((p) => p.messages)).toEqual(run.map((_, i) => (i === sweep ? 1 : 0)));
    expect(await messages(S)).toBe(1);
  });

  it('leaves outbox.purge() removing everything eligible from the first message, whatever the passes did', async () => {
    const [first] = await publishAll(w, 'held', 3);
    await settled(S, w, 4);
    await ageAll(S);
    const run = await passes(S, position, 1);
    expect(run[0]).toMatchObject({ messages: 0 });
    await t.pool.query(`DELETE FROM ${S}.deliveries WHERE message_id = $1`, [first]);
    // Below the frontier now, and no sweep due: purge() finds it all the same.
    expect(await t.outbox({ schema: S }).purge()).toMatchObject({ messages: 1 });
    expect(await messages(S)).toBe(3);
  });
});
