import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/*
 * A bounded soak at a steady rate, twice: once as usual, once while another session holds a transaction open (with
 * an xid, so it also holds back the relay's horizon and every vacuum). Every few seconds it samples the deliveries
 * table's dead tuples and sizes, the cost of the claim's index scan (EXPLAIN ANALYZE buffers), and the
 * commit-to-handler latency. SOAK_SECONDS (per phase) runs it longer by hand; the figures go to stdout.
 * The machine's PostgreSQL 15 runs with autovacuum off and the embedded one with it on, so CI measures both.
 */
const PHASE_MS = Number(process.env.SOAK_SECONDS ?? 20) * 1000;
const RATE_PER_S = Number(process.env.SOAK_RATE ?? 500);
const SAMPLE_MS = Math.max(2_000, PHASE_MS / 10);
const TICK_MS = 20;

interface Sample {
  phase: string;
  atS: number;
  published: number;
  backlog: number;
  deadTuples: number;
  tableKiB: number;
  indexKiB: number;
  scanBuffers: number;
  scanMs: number;
  p50Ms: number;
  p99Ms: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] as number;
}

describe('a bounded soak at a steady rate', () => {
  let t: OutboxTestContext;
  let outbox: Outbox;
  const latencies: number[] = [];
  let handled = 0;

  beforeAll(async () => {
    t = await setupOutboxTest();
    outbox = t.outbox();
    outbox.subscribe('soak', { topics: ['soak.tick'] }, (m) => {
      latencies.push(Date.now() - (m.payload as { sentAt: number }).sentAt);
      handled += 1;
    });
    await outbox.start();
  });
  afterAll(async () => t.close());

  /** The claim's index scan, read-only: what every claim walks through, dead index entries included. */
  async function claimScan(): Promise<{ buffers: number; ms: number }> {
    const { rows } = await t.pool.query<{
      'QUERY PLAN': [{ Plan: Record<string, number>; 'Execution Time': number }];
    }>(
      `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
       SELECT id FROM outbox.deliveries
       WHERE subscription_id = (SELECT id FROM outbox.subscriptions WHERE name = 'soak')
         AND state = 'pending' AND available_at <= now()
       ORDER BY available_at, id
       LIMIT 100`,
    );
    const plan = rows[0]?.['QUERY PLAN'][0];
    const buffers = (plan?.Plan['Shared Hit Blocks'] ?? 0) + (plan?.Plan['Shared Read Blocks'] ?? 0);
    return { buffers, ms: plan?.['Execution Time'] ?? 0 };
  }

  async function sample(phase: string, startedAt: number, published: number): Promise<Sample> {
    const { rows } = await t.pool.query<{ dead: string; table: string; index: string; backlog: string }>(
      `SELECT s.n_dead_tup AS dead,
              pg_relation_size('outbox.deliveries') AS table,
              pg_indexes_size('outbox.deliveries') AS index,
              (SELECT count(*) FROM outbox.deliveries WHERE state = 'pending') AS backlog
       FROM pg_stat_user_tables s
       WHERE s.schemaname = 'outbox' AND s.relname = 'deliveries'`,
    );
    const row = rows[0];
    const scan = await claimScan();
    const window = latencies.splice(0).sort((a, b) => a - b);
    return {
      phase,
      atS: Math.round((Date.now() - startedAt) / 1000),
      published,
      backlog: Number(row?.backlog),
      deadTuples: Number(row?.dead),
      tableKiB: Math.round(Number(row?.table) / 1024),
      indexKiB: Math.round(Number(row?.index) / 1024),
      scanBuffers: scan.buffers,
      scanMs: Math.round(scan.ms * 100) / 100,
      p50Ms: percentile(window, 50),
      p99Ms: percentile(window, 99),
    };
  }

  /** Publishes RATE_PER_S messages a second for PHASE_MS, sampling every SAMPLE_MS. */
  async function steadyLoad(phase: string, samples: Sample[]): Promise<number> {
    const startedAt = Date.now();
    let published = 0;
    let nextSample = startedAt + SAMPLE_MS;
    while (Date.now() - startedAt < PHASE_MS) {
      const due = Math.floor(((Date.now() - startedAt) / 1000) * RATE_PER_S);
      const batch = Array.from({ length: due - published }, () => ({
        topic: 'soak.tick',
        payload: { sentAt: Date.now() },
      }));
      if (batch.length > 0) await outbox.publishMany(t.pool, batch);
      published += batch.length;
      if (Date.now() >= nextSample) {
        samples.push(await sample(phase, startedAt, published));
        nextSample += SAMPLE_MS;
      }
      await sleep(TICK_MS);
    }
    return published;
  }

  it(
    'keeps up at a steady rate, and drains after a long open transaction ends',
    async () => {
      const { rows: settings } = await t.pool.query<{ setting: string }>(
        `SELECT current_setting('autovacuum') AS setting`,
      );
      const samples: Sample[] = [];
      let published = await steadyLoad('steady', samples);

      const holder = new pg.Client({ connectionString: t.db.url });
      await holder.connect();
      try {
        // An idle transaction with an xid: no dead row from now on can be removed, and the relay's horizon waits.
        await holder.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
        await holder.query('SELECT pg_current_xact_id()');
        published += await steadyLoad('long tx open', samples);
      } finally {
        await holder.query('COMMIT').catch(() => undefined);
        await holder.end();
      }
      const endedAt = Date.now();
      await waitFor('the backlog drained', () => handled >= published, 60_000);
      const drainMs = Date.now() - endedAt;
      // An autovacuum ANALYZE that started while the long transaction was open can hold the horizon a little
      // longer: vacuum until the dead tuples are gone, within a deadline.
      const vacuumedAt = Date.now();
      await waitFor(
        'a VACUUM that removes the dead tuples',
        async () => {
          await t.pool.query('VACUUM outbox.deliveries');
          return (await sample('after VACUUM', endedAt, published)).deadTuples < RATE_PER_S;
        },
        60_000,
      ).catch((error: unknown) => console.error(error));
      const vacuumMs = Date.now() - vacuumedAt;
      samples.push(await sample('after VACUUM', endedAt, published));

      console.info(
        `bloat soak (autovacuum ${settings[0]?.setting}, ${RATE_PER_S} msg/s, ${PHASE_MS / 1000} s per phase); ` +
          `drained ${drainMs} ms after the long transaction ended; vacuumed clean in ${vacuumMs} ms`,
      );
      console.table(samples);

      expect(handled).toBe(published);
      expect(await count(t.pool, `SELECT count(*) AS n FROM outbox.completed_deliveries`)).toBe(published);
      // Once nothing holds the horizon back, a vacuum removes what the soak left behind.
      expect(samples.at(-1)?.deadTuples).toBeLessThan(RATE_PER_S);
    },
    4 * PHASE_MS + 120_000,
  );
});
