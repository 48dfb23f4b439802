import type pg from 'pg';
import { pgExecutor, type Executor } from '../../src/db/executor.js';
import { schemaName, type SchemaName } from '../../src/db/identifiers.js';
import { claimDeliveries, selectNextDueMs } from '../../src/sql/claim.js';
import { createOutbox } from '../../src/index.js';
import { addDelayedRows, addDueRows } from '../lib/backlog-fill.js';
import type { BenchContext } from '../lib/context.js';
import { createPool, dropSchemas, preciseNow } from '../lib/db.js';
import type { ScenarioReport } from '../lib/report.js';
import { distribution, median, type Distribution } from '../lib/stats.js';
import { int, ms, ratio } from '../lib/table.js';

/**
 * Scenario 6, backlog: what one claim costs while 0, 1M and 10M deliveries wait (delayed: due a day or more from
 * now), pg-outbox only. The claim is the consumer's own statement (claimDeliveries from src/sql/deliveries.ts),
 * run two ways: under EXPLAIN (ANALYZE, BUFFERS) inside a transaction that is rolled back, and as timed real
 * claims of batch 1 and batch 100 that commit. Also timed: selectNextDueMs, the "when is the next one due" lookup
 * a consumer runs whenever a claim comes back short.
 */
const SCHEMA = 'bench_backlog';
const CLAIM = { leaseMs: 30_000, maxAttempts: 10, consumer: 0 };
const EXPLAIN_RUNS = 11;

interface Level {
  waiting: number;
  fillSeconds: number;
  tableSize: string;
  dueIndexSize: string;
  explainMs: number;
  plan: string[];
  claim1: Distribution;
  claim100: Distribution;
  nextDue: Distribution;
}

async function explainClaim(pool: pg.Pool, s: SchemaName, subscriptionId: number): Promise<string[]> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    let plan: string[] = [];
    const explain: Executor = {
      async query<R>(text: string, params: readonly unknown[] = []): Promise<R[]> {
        const result = await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${text}`, [
          ...params,
        ]);
        plan = result.rows.map((r) => r['QUERY PLAN']);
        return [];
      },
    };
    await claimDeliveries(explain, s, { subscriptionId, limit: 100, ...CLAIM });
    return plan;
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}

const executionMs = (plan: string[]) => Number(/Execution Time: ([\d.]+)/.exec(plan.join('\n'))?.[1] ?? NaN);

async function timed(runs: number, fn: () => Promise<unknown>): Promise<Distribution> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = preciseNow();
    await fn();
    times.push(preciseNow() - started);
  }
  return distribution(times);
}

/**
 * The fill leaves gigabytes of dirty pages; a checkpoint flushing them during the timed claims would make every
 * claim's COMMIT wait on a busy disk. CHECKPOINT needs superuser or pg_checkpoint: without it, go on and say so.
 */
async function checkpoint(pool: pg.Pool, log: (line: string) => void): Promise<void> {
  try {
    await pool.query('CHECKPOINT');
  } catch (error) {
    log(`backlog: CHECKPOINT failed (${(error as Error).message}); timings may include the fill's writes`);
  }
}

async function relationSizes(pool: pg.Pool): Promise<{ table: string; index: string }> {
  const { rows } = await pool.query<{ table: string; index: string }>(
    `SELECT pg_size_pretty(pg_total_relation_size('${SCHEMA}.deliveries')) AS table,
            pg_size_pretty(pg_relation_size('${SCHEMA}.deliveries_due_idx')) AS index`,
  );
  return rows[0] ?? { table: '?', index: '?' };
}

/** EXPLAIN runs, then timed real claims of batch 1 and 100, then timed next-due lookups, at one level. */
async function measureLevel(
  pool: pg.Pool,
  s: SchemaName,
  subscriptionId: number,
  claims: number,
): Promise<Omit<Level, 'waiting' | 'fillSeconds'>> {
  const exec = pgExecutor(pool);
  const plans: string[][] = [];
  for (let i = 0; i < EXPLAIN_RUNS; i++) plans.push(await explainClaim(pool, s, subscriptionId));
  const claim = (limit: number) => async () => {
    const got = await claimDeliveries(exec, s, { subscriptionId, limit, ...CLAIM });
    if (got.length !== limit) throw new Error(`claim of ${limit} returned ${got.length} rows`);
  };
  const claim1 = await timed(claims, claim(1));
  const claim100 = await timed(claims, claim(100));
  const nextDue = await timed(claims, () => selectNextDueMs(exec, s, subscriptionId));
  const sizes = await relationSizes(pool);
  return {
    tableSize: sizes.table,
    dueIndexSize: sizes.index,
    explainMs: median(plans.map(executionMs)),
    plan: plans.at(-1) ?? [],
    claim1,
    claim100,
    nextDue,
  };
}

export async function backlogScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const { backlogMax, backlogClaims: claims } = ctx.config;
  const levels = [...new Set([0, Math.min(1_000_000, backlogMax), backlogMax])];
  const pool = createPool(ctx.url, 3);
  const s = schemaName(SCHEMA);
  const results: Level[] = [];
  try {
    await dropSchemas(pool, SCHEMA);
    const outbox = createOutbox({ pool, schema: SCHEMA });
    await outbox.migrate();
    await outbox.declareSubscription('backlog', { topics: ['bench.backlog'] });
    const { rows } = await pool.query<{ id: number }>(
      `SELECT id FROM ${SCHEMA}.subscriptions WHERE name = 'backlog'`,
    );
    const subscriptionId = rows[0]?.id ?? 0;
    let waiting = 0;
    for (const level of levels) {
      const fillStarted = preciseNow();
      await addDelayedRows(pool, SCHEMA, subscriptionId, level - waiting, (done) =>
        ctx.log(`backlog: ${int(waiting + done)} of ${int(level)} waiting rows written`),
      );
      waiting = level;
      // Enough due work for every timed claim, plus the rows EXPLAIN claims and rolls back.
      await addDueRows(pool, SCHEMA, subscriptionId, claims * 101 + 100);
      // Autovacuum (off on this server) would have analysed tables that grew this much.
      await pool.query(`ANALYZE ${SCHEMA}.messages`);
      await pool.query(`ANALYZE ${SCHEMA}.deliveries`);
      await checkpoint(pool, ctx.log);
      const fillSeconds = (preciseNow() - fillStarted) / 1000;
      const measured = await measureLevel(pool, s, subscriptionId, claims);
      // The level's claims leave leased rows and dead row versions at the head of the due index, which autovacuum
      // (off on this server) would clear: remove them, so the next level measures its own waiting rows only.
      await pool.query(`DELETE FROM ${SCHEMA}.deliveries WHERE available_at < now() + interval '1 hour'`);
      await pool.query(`VACUUM ${SCHEMA}.deliveries`);
      const result: Level = { waiting: level, fillSeconds, ...measured };
      results.push(result);
      ctx.log(
        `backlog ${int(level)} waiting: claim 1 p50 ${ms(result.claim1.p50)} ms, claim 100 p50 ` +
          `${ms(result.claim100.p50)} ms, EXPLAIN ${ms(result.explainMs)} ms (fill ${fillSeconds.toFixed(1)} s)`,
      );
    }
  } finally {
    await dropSchemas(pool, SCHEMA);
    await pool.end();
  }

  const first = results[0];
  const last = results.at(-1);
  const flat = (f: (l: Level) => number) =>
    first !== undefined && last !== undefined ? f(last) / f(first) : NaN;
  // Noise on a shared 2-core machine moves sub-millisecond timings by tens of percent; 1.5x allows for that.
  const FLAT = 1.5;
  return {
    name: 'backlog',
    title: '6. Claim cost with a backlog of waiting rows',
    repetitions: `one pass; ${claims} timed claims per batch size, EXPLAIN median of ${EXPLAIN_RUNS}`,
    method: [
      `pg-outbox only. Waiting rows: ${levels.map(int).join(' / ')} delayed deliveries (due a day and more from ` +
        'now) of the same subscription, written with set-based INSERT … SELECT generate_series into messages + ' +
        `deliveries in chunks of 1M, then ANALYZE. At each level ${int(claims * 101 + 100)} due deliveries are added ` +
        `and claimed: ${claims} real claims of batch 1, then ${claims} of batch 100, each committing (client-side ` +
        'time, one round trip). EXPLAIN: the same claim statement (batch 100) under EXPLAIN (ANALYZE, BUFFERS), ' +
        `rolled back, median of ${EXPLAIN_RUNS}. next-due: selectNextDueMs, run after every short claim.`,
      'After each level, its claimed and leftover due rows are deleted and deliveries is vacuumed (as autovacuum, ' +
        'off on this server, would): otherwise the next level would also walk the earlier claims’ dead index entries.',
      'After each fill: ANALYZE and a CHECKPOINT, so the fill’s dirty pages are not written during the timed claims. ' +
        'Timed claims include their COMMIT (synchronous_commit on): a WAL flush per claim.',
    ],
    tables: [
      {
        caption: 'Claim cost by waiting rows (ms)',
        table: {
          headers: [
            'waiting rows',
            'deliveries size',
            'due index',
            'EXPLAIN exec',
            'claim 1 p50',
            'claim 1 p95',
            'claim 100 p50',
            'claim 100 p95',
            'next-due p50',
            'fill s',
          ],
          rows: results.map((l) => [
            int(l.waiting),
            l.tableSize,
            l.dueIndexSize,
            ms(l.explainMs),
            ms(l.claim1.p50),
            ms(l.claim1.p95),
            ms(l.claim100.p50),
            ms(l.claim100.p95),
            ms(l.nextDue.p50),
            l.fillSeconds.toFixed(1),
          ]),
          textColumns: 0,
        },
      },
    ],
    ratios: [
      `${int(last?.waiting ?? 0)} waiting / 0 waiting: claim 1 ${ratio(flat((l) => l.claim1.p50))}, claim 100 ` +
        `${ratio(flat((l) => l.claim100.p50))}, EXPLAIN ${ratio(flat((l) => l.explainMs))}, next-due ` +
        `${ratio(flat((l) => l.nextDue.p50))}`,
    ],
    targets: [
      {
        target: `claim cost flat from 0 to ${int(last?.waiting ?? 0)} waiting (within ${FLAT}× of the 0-row median)`,
        met: [(l: Level) => l.explainMs, (l: Level) => l.claim1.p50, (l: Level) => l.claim100.p50].every(
          (f) => flat(f) <= FLAT,
        ),
        detail:
          `EXPLAIN ${ms(first?.explainMs ?? NaN)} → ${ms(last?.explainMs ?? NaN)} ms; claim 1: ` +
          `${ms(first?.claim1.p50 ?? NaN)} → ${ms(last?.claim1.p50 ?? NaN)} ms; claim 100: ` +
          `${ms(first?.claim100.p50 ?? NaN)} → ${ms(last?.claim100.p50 ?? NaN)} ms`,
      },
    ],
    notes: [],
    blocks: results.map((l) => ({
      caption: `EXPLAIN (ANALYZE, BUFFERS) of the claim (batch 100) with ${int(l.waiting)} waiting rows`,
      text: l.plan.join('\n'),
    })),
  };
}
