/**
 * Delayed-delivery benchmark: N messages due over a window of a few seconds, published while an immediate-topic
 * load runs, consumed by one subscription; prints how late each was handled after its due time (p50 / p95 / p99 /
 * max), and the claim's cost (EXPLAIN ANALYZE of the due-row scan) with 0 and with 1,000,000 delayed rows waiting.
 * Run: npx tsx bench/delay-lateness.ts [N]. Uses DATABASE_URL when set, else an embedded PostgreSQL.
 * The due time comes from the database (now() + delayMs); lateness compares it with the Node clock of the same
 * machine, which is fine for a benchmark and never done in the library.
 */
import pg from 'pg';
import { createOutbox } from '../src/index.js';
import { startPostgres } from '../test/helpers/postgres.js';

const total = Number(process.argv[2] ?? 2000);
const server = await startPostgres();
const pool = new pg.Pool({ connectionString: server.url, max: 20 });
const schema = 'bench_delay';

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function claimScanMs(subscriptionId: number): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const { rows } = await pool.query<{ 'QUERY PLAN': [{ 'Execution Time': number }] }>(
      `EXPLAIN (ANALYZE, FORMAT JSON)
       SELECT q.id FROM ${schema}.deliveries q
       WHERE q.subscription_id = $1::int AND q.state = 'pending' AND q.available_at <= now()
       ORDER BY q.available_at, q.id LIMIT 100`,
      [subscriptionId],
    );
    runs.push(rows[0]?.['QUERY PLAN'][0]['Execution Time'] ?? NaN);
  }
  return runs.sort((a, b) => a - b)[2] ?? NaN;
}

try {
  await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  const outbox = createOutbox({ pool, schema });
  await outbox.migrate();
  await outbox.declareSubscription('late', { topics: ['bench.delayed'] });
  await outbox.declareSubscription('load', { topics: ['bench.load'] });
  const { rows } = await pool.query<{ id: number }>(
    `SELECT id FROM ${schema}.subscriptions WHERE name = 'late'`,
  );
  const subscriptionId = rows[0]?.id ?? 0;

  const emptyMs = await claimScanMs(subscriptionId);
  await pool.query(
    `INSERT INTO ${schema}.deliveries (subscription_id, message_id, available_at)
     SELECT $1::int, -g, now() + interval '1 day' + g * interval '1 millisecond' FROM generate_series(1, 1000000) g`,
    [subscriptionId],
  );
  await pool.query(`ANALYZE ${schema}.deliveries`);
  const fullMs = await claimScanMs(subscriptionId);
  console.log(
    `claim scan (median of 5): 0 waiting ${emptyMs.toFixed(3)} ms, 1,000,000 waiting ${fullMs.toFixed(3)} ms`,
  );

  const lateness: number[] = [];
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((r) => (resolveDone = r));
  outbox.subscribe('late', { topics: ['bench.delayed'], concurrency: 20 }, (m) => {
    if (m.deliverAt !== null) lateness.push(Date.now() - m.deliverAt.getTime());
    if (lateness.length === total) resolveDone();
  });
  outbox.subscribe('load', { topics: ['bench.load'], concurrency: 20 }, () => undefined);
  await outbox.start();

  // Background load: immediate messages on another subscription for the whole run.
  let loading = true;
  const load = (async () => {
    while (loading) {
      await outbox.publishMany(
        pool,
        Array.from({ length: 50 }, (_, i) => ({ topic: 'bench.load', payload: { i } })),
      );
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  for (let i = 0; i < total; i += 100) {
    await outbox.publishMany(
      pool,
      Array.from({ length: Math.min(100, total - i) }, (_, j) => ({
        topic: 'bench.delayed',
        payload: { n: i + j },
        delayMs: 1000 + Math.floor(Math.random() * 4000),
      })),
    );
  }
  await done;
  loading = false;
  await load;
  await outbox.stop();
  lateness.sort((a, b) => a - b);
  const early = lateness.filter((l) => l < 0).length;
  console.log(
    `delayed ${total} messages under load: lateness p50 ${percentile(lateness, 50)} ms, ` +
      `p95 ${percentile(lateness, 95)} ms, p99 ${percentile(lateness, 99)} ms, max ${lateness.at(-1)} ms, ` +
      `early ${early}`,
  );
} finally {
  await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
  await pool.end();
  await server.stop();
}
