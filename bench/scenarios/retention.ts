import type pg from 'pg';
import { schemaName } from '../../src/db/identifiers.js';
import type { Executor } from '../../src/db/executor.js';
import { createOutbox } from '../../src/index.js';
import { claimDeliveries } from '../../src/sql/claim.js';
import type { BenchContext } from '../lib/context.js';
import { createPool, dropSchemas, preciseNow, waitFor } from '../lib/db.js';
import type { ScenarioReport } from '../lib/report.js';
import { summarize } from '../lib/stats.js';
import { int } from '../lib/table.js';

const SCHEMA = 'bench_retention';
const TABLES = ['messages', 'deliveries', 'completed_deliveries', 'delivery_failures'] as const;
const RETENTION_MS = 2_000;

interface Sample {
  round: number;
  handled: number;
  kept: number;
  sizes: Record<string, { total: number; dead: number }>;
  claimBuffers: number;
  claimMs: number;
  statusMs: number;
}

async function count(pool: pg.Pool, sql: string): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(sql);
  return Number(rows[0]?.n ?? 0);
}

async function tableSizes(pool: pg.Pool): Promise<Sample['sizes']> {
  const { rows } = await pool.query<{ relname: string; total: string; dead: string }>(
    `SELECT c.relname, pg_total_relation_size(c.oid)::text AS total, coalesce(st.n_dead_tup, 0)::text AS dead
     FROM pg_class c
     JOIN pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
     WHERE n.nspname = $1 AND c.relname = ANY ($2::text[])`,
    [SCHEMA, [...TABLES]],
  );
  return Object.fromEntries(rows.map((r) => [r.relname, { total: Number(r.total), dead: Number(r.dead) }]));
}

/**
 * A claim of 100 on the drained subscription, inside a transaction that is rolled back: the shared buffers it
 * touched (dead index entries and heap pages it has to step over show here, whatever the machine's speed) and its
 * time.
 */
async function claimCost(pool: pg.Pool, subscriptionId: number): Promise<{ buffers: number; ms: number }> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    let buffers = 0;
    let ms = 0;
    const explain: Executor = {
      async query<R>(text: string, params: readonly unknown[] = []): Promise<R[]> {
        const result = await client.query<{ 'QUERY PLAN': unknown }>(
          `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`,
          [...params],
        );
        const plan = (result.rows[0]?.['QUERY PLAN'] as [Record<string, unknown>])[0];
        const top = plan.Plan as Record<string, number>;
        buffers = (top['Shared Hit Blocks'] ?? 0) + (top['Shared Read Blocks'] ?? 0);
        ms = Number(plan['Execution Time'] ?? 0);
        return [];
      },
    };
    const s = schemaName(SCHEMA);
    await claimDeliveries(explain, s, {
      subscriptionId,
      limit: 100,
      leaseMs: 30_000,
      maxAttempts: 10,
      consumer: 0,
    });
    return { buffers, ms };
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}

/**
 * Retention soak (issue 14): rounds of N messages published and handled (1 in 50 fails once, so failure rows are
 * written and removed too) with retentionMs 2 s and the maintenance loop every 250 ms, beside a paused subscription
 * whose 1,000 pending deliveries (and messages) must stay. After each round, once retention has caught up: table
 * sizes with their indexes, dead tuples, and the cost of a claim on the drained subscription. Flat figures mean
 * retention keeps up and the space it frees is reused.
 */
export async function retentionScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const rounds = Math.max(2, Number(process.env.BENCH_RETENTION_ROUNDS ?? 10));
  const n = Math.max(1_000, Number(process.env.BENCH_RETENTION_N ?? 20_000));
  const pool = createPool(ctx.url, 10);
  const vacuum = process.env.BENCH_RETENTION_VACUUM !== '0';
  const { rows: server } = await pool.query<{ on: string; version: string }>(
    `SELECT current_setting('autovacuum') AS on, current_setting('server_version_num') AS version`,
  );
  const autovacuum = server[0]?.on === 'on';
  const major = Math.floor(Number(server[0]?.version ?? 0) / 10_000);
  await dropSchemas(pool, SCHEMA);
  const outbox = createOutbox({
    pool,
    schema: SCHEMA,
    retentionMs: RETENTION_MS,
    relay: { maintenanceIntervalMs: 250, batchSize: 5_000, vacuum },
  });
  await outbox.migrate();
  await outbox.declareSubscription('work', { topics: ['soak.work'] });
  await outbox.declareSubscription('paused', { topics: ['soak.paused'] });
  await outbox.publishMany(
    pool,
    Array.from({ length: 1_000 }, (_, i) => ({ topic: 'soak.paused', payload: { i }, key: `k${i}` })),
  );
  let handled = 0;
  const failedOnce = new Set<number>();
  outbox.subscribe(
    'work',
    { topics: ['soak.work'], batchSize: 1_000, concurrency: 200, retry: { minDelayMs: 0, maxDelayMs: 0 } },
    (message) => {
      const i = (message.payload as { i: number }).i;
      if (i % 50 === 0 && !failedOnce.has(i)) {
        failedOnce.add(i);
        throw new Error('soak failure');
      }
      handled += 1;
    },
  );
  await outbox.start();
  const { rows: sub } = await pool.query<{ id: number }>(
    `SELECT id FROM ${SCHEMA}.subscriptions WHERE name = 'work'`,
  );
  const workId = sub[0]?.id ?? 0;
  const samples: Sample[] = [];
  try {
    for (let round = 1; round <= rounds; round++) {
      failedOnce.clear();
      const target = handled + n;
      for (let i = 0; i < n; i += 1_000) {
        await outbox.publishMany(
          pool,
          Array.from({ length: 1_000 }, (_, j) => ({ topic: 'soak.work', payload: { i: i + j } })),
        );
      }
      await waitFor('the round handled', () => handled >= target, { timeoutMs: 300_000, intervalMs: 20 });
      // Retention has caught up when only the paused subscription's messages remain.
      await waitFor(
        'retention to remove the round',
        async () => (await count(pool, `SELECT count(*) AS n FROM ${SCHEMA}.messages`)) <= 1_000,
        { timeoutMs: 300_000, intervalMs: 100 },
      );
      const statusStart = preciseNow();
      await outbox.status();
      const statusMs = preciseNow() - statusStart;
      const claim = await claimCost(pool, workId);
      samples.push({
        round,
        handled,
        kept: await count(pool, `SELECT count(*) AS n FROM ${SCHEMA}.deliveries`),
        sizes: await tableSizes(pool),
        claimBuffers: claim.buffers,
        claimMs: claim.ms,
        statusMs,
      });
      ctx.log(`retention round ${round}: ${JSON.stringify(samples.at(-1))}`);
    }
  } finally {
    await outbox.stop();
    await pool.end();
  }
  const kb = (bytes: number | undefined) => int((bytes ?? 0) / 1024);
  return {
    name: 'retention',
    variant: `pg${major}${vacuum ? '' : '-novacuum'}`,
    title: `9. Retention soak (PostgreSQL ${major}, autovacuum ${autovacuum ? 'on' : 'off'}, relay.vacuum ${vacuum ? 'on' : 'off'})`,
    method: [
      `${rounds} rounds of ${int(n)} messages published (1,000 per transaction) and handled by one lease-mode ` +
        'subscription (batchSize 1000, concurrency 200; 1 message in 50 fails once), retentionMs 2 s, maintenance ' +
        'every 250 ms, beside a paused subscription holding 1,000 pending deliveries. After each round, once only ' +
        "the paused subscription's messages remain: sizes with indexes (pg_total_relation_size), dead tuples " +
        '(pg_stat_user_tables), a claim of 100 on the drained subscription (EXPLAIN ANALYZE, buffers touched), ' +
        'and one status() call.',
      `Server autovacuum: ${autovacuum ? 'on' : 'off'}; the maintenance loop's own VACUUM (relay.vacuum): ` +
        `${vacuum ? 'on' : 'off (BENCH_RETENTION_VACUUM=0)'}.`,
    ],
    tables: [
      {
        caption: 'After each round (sizes in KiB; dead = dead tuples)',
        table: {
          headers: [
            'round',
            'handled',
            'pending kept',
            ...TABLES.flatMap((t) => [`${t} KiB`, `${t} dead`]),
            'claim buffers',
            'claim ms',
            'status() ms',
          ],
          rows: samples.map((s) => [
            String(s.round),
            int(s.handled),
            int(s.kept),
            ...TABLES.flatMap((t) => [kb(s.sizes[t]?.total), int(s.sizes[t]?.dead ?? 0)]),
            int(s.claimBuffers),
            s.claimMs.toFixed(2),
            s.statusMs.toFixed(1),
          ]),
        },
      },
    ],
    ratios: [`claim buffers, median of rounds: ${int(summarize(samples.map((s) => s.claimBuffers)).median)}`],
    targets: [],
    notes: [
      'Reproduce: `npm run bench:retention` (the shared PostgreSQL 15, autovacuum off) and ' +
        '`BENCH_POSTGRES=embedded npm run bench:retention` (embedded PostgreSQL 18, autovacuum on); ' +
        'BENCH_RETENTION_ROUNDS and BENCH_RETENTION_N change the size; BENCH_RETENTION_VACUUM=0 turns relay.vacuum off.',
    ],
  };
}
