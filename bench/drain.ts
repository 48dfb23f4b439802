/**
 * Drain benchmark: N messages published and relayed, then consumed by one subscription with a no-op handler,
 * from the first claim to the last ack; and, in the same run, the raw ceiling: a hand-written
 * `DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING` loop over a bare table on 4
 * connections. Prints msg/s, median of 3, per system. Run: npx tsx bench/drain.ts [N]
 * Uses DATABASE_URL when set, else an embedded PostgreSQL. pg-boss and graphile-worker come in the benchmark issue.
 */
import pg from 'pg';
import { createOutbox, type SubscriptionMode } from '../src/index.js';
import { startPostgres } from '../test/helpers/postgres.js';

const total = Number(process.argv[2] ?? 50_000);
const server = await startPostgres();
const pool = new pg.Pool({ connectionString: server.url, max: 20 });

async function run(mode: SubscriptionMode): Promise<number> {
  const schema = `bench_drain_${mode}`;
  await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  const outbox = createOutbox({ pool, schema, relay: { batchSize: 5000 } });
  await outbox.migrate();
  await outbox.declareSubscription('drain', { topics: ['bench.drain'] });
  for (let i = 0; i < total; i += 1000) {
    await outbox.publishMany(
      pool,
      Array.from({ length: Math.min(1000, total - i) }, (_, j) => ({
        topic: 'bench.drain',
        payload: { n: i + j },
      })),
    );
  }
  // Relay everything first, so the figure is the consumer's drain rate.
  const relayOnly = createOutbox({ pool, schema });
  await relayOnly.start();
  for (;;) {
    const { rows } = await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.deliveries`);
    if (Number(rows[0]?.n) >= total) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  await relayOnly.stop();
  await pool.query(`VACUUM ANALYZE ${schema}.deliveries`);
  let handled = 0;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((r) => (resolveDone = r));
  outbox.subscribe(
    'drain',
    { topics: ['bench.drain'], mode, batchSize: 1000, concurrency: mode === 'lease' ? 200 : 4 },
    () => {
      if (++handled === total) resolveDone();
    },
  );
  const started = performance.now();
  await outbox.start();
  await done;
  await outbox.stop();
  const seconds = (performance.now() - started) / 1000;
  return total / seconds;
}

async function runRaw(): Promise<number> {
  await pool.query('DROP TABLE IF EXISTS bench_raw_queue');
  await pool.query(
    'CREATE TABLE bench_raw_queue (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL)',
  );
  await pool.query(
    `INSERT INTO bench_raw_queue (payload) SELECT jsonb_build_object('n', g) FROM generate_series(1, $1::int) g`,
    [total],
  );
  await pool.query('VACUUM ANALYZE bench_raw_queue');
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (;;) {
        const { rowCount } = await pool.query(
          `DELETE FROM bench_raw_queue WHERE id IN (
             SELECT id FROM bench_raw_queue ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED
           ) RETURNING payload`,
        );
        if (rowCount === 0) return;
      }
    }),
  );
  return total / ((performance.now() - started) / 1000);
}

function report(label: string, rates: number[]): void {
  rates.sort((a, b) => a - b);
  console.log(
    `${label.padEnd(34)} median ${Math.round(rates[1] ?? 0)} msg/s   runs ${rates.map(Math.round).join(', ')}`,
  );
}

try {
  console.log(`drain ${total} messages, no-op handler`);
  const raw: number[] = [];
  const ours: Record<string, number[]> = { lease: [], transactional: [] };
  for (let i = 0; i < 3; i++) {
    raw.push(await runRaw());
    for (const mode of ['lease', 'transactional'] as const) ours[mode]?.push(await run(mode));
  }
  report('raw DELETE … SKIP LOCKED ceiling', raw);
  report('pg-outbox, lease mode', ours.lease ?? []);
  report('pg-outbox, transactional mode', ours.transactional ?? []);
} finally {
  await pool.end();
  await server.stop();
}
