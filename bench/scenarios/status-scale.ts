import type pg from 'pg';
import { createOutbox } from '../../src/index.js';
import type { BenchContext } from '../lib/context.js';
import { createPool, dropSchemas, preciseNow } from '../lib/db.js';
import type { ScenarioReport } from '../lib/report.js';
import { summarize } from '../lib/stats.js';
import { int } from '../lib/table.js';

const SCHEMA = 'bench_status_scale';
const CALLS = 11;
const WEEK_S = 7 * 86_400;

interface Level {
  history: number;
  statusMs: number;
  statusBehindOpenTxMs: number;
  journeyMs: number;
  doneLastHour: number;
}

/**
 * Adds finished history up to `total` messages: messages published over the last 7 days in id order, each done in
 * one subscription a second later, 1 in 100 with a failed first attempt. Then the relay's position is moved past
 * them (they count as relayed, as they would have been).
 */
async function growHistory(pool: pg.Pool, from: number, total: number): Promise<void> {
  const chunk = 1_000_000;
  for (let start = from; start < total; start += chunk) {
    const end = Math.min(total, start + chunk);
    await pool.query(
      `WITH m AS (
         INSERT INTO ${SCHEMA}.messages (topic, key, payload, created_at)
         SELECT 'history', 'k' || (g % 1000), '{}'::jsonb,
                now() - $3::int * interval '1 second' * (1 - g::float8 / $4::int)
         FROM generate_series($1::int + 1, $2::int) g
         RETURNING id, key, created_at
       ),
       c AS (
         INSERT INTO ${SCHEMA}.completed_deliveries
           (id, subscription_id, message_id, key, attempt, created_at, completed_at, first_attempt_at,
            last_attempt_at, consumer_id)
         SELECT m.id, 1, m.id, m.key, 1, m.created_at, m.created_at + interval '1 second', NULL,
                m.created_at, 0
         FROM m
       )
       INSERT INTO ${SCHEMA}.delivery_failures (message_id, subscription_id, delivery_id, attempt, error, failed_at)
       SELECT m.id, 1, m.id, 1, 'history failure', m.created_at FROM m WHERE m.id % 100 = 0`,
      [start, end, WEEK_S, total],
    );
  }
  await pool.query(
    `UPDATE ${SCHEMA}.relay_state
     SET done_snapshot = pg_current_snapshot(), done_max_id = (SELECT coalesce(max(id), 0) FROM ${SCHEMA}.messages),
         done_xid_bound = NULL, done_xid_bound_xmax = NULL`,
  );
  await pool.query(
    `VACUUM ANALYZE ${SCHEMA}.messages, ${SCHEMA}.completed_deliveries, ${SCHEMA}.delivery_failures`,
  );
}

async function medianMs(fn: () => Promise<unknown>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    const start = preciseNow();
    await fn();
    times.push(preciseNow() - start);
  }
  return summarize(times).median;
}

/**
 * status() (the audit_subscriptions and audit_relay views) and journey() as the finished history grows to
 * BENCH_STATUS_HISTORY messages (default 10M), with 10,000 pending deliveries and 100 dead letters beside it; once
 * more while another session holds a transaction with an xid open (the case where a count from the relay's horizon
 * would walk the history).
 */
export async function statusScaleScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const max = Math.max(1_000_000, Number(process.env.BENCH_STATUS_HISTORY ?? 10_000_000));
  const pool = createPool(ctx.url, 4);
  await dropSchemas(pool, SCHEMA);
  const outbox = createOutbox({ pool, schema: SCHEMA, relay: { enabled: false } });
  await outbox.migrate();
  await outbox.declareSubscription('points', { topics: ['history', 'live'] });
  const levels: Level[] = [];
  let grown = 0;
  try {
    for (const history of [0, max / 10, max]) {
      await growHistory(pool, grown, history);
      grown = history;
      if (levels.length === 0) {
        await outbox.publishMany(
          pool,
          Array.from({ length: 10_000 }, (_, i) => ({ topic: 'live', payload: { i } })),
        );
        await pool.query(
          `INSERT INTO ${SCHEMA}.deliveries (subscription_id, message_id, available_at)
           SELECT 1, id, now() FROM ${SCHEMA}.messages WHERE topic = 'live'`,
        );
        await pool.query(
          `UPDATE ${SCHEMA}.relay_state SET done_snapshot = pg_current_snapshot(),
             done_max_id = (SELECT coalesce(max(id), 0) FROM ${SCHEMA}.messages), done_xid_bound = NULL`,
        );
      }
      const statusMs = await medianMs(() => outbox.status());
      const blocker = await pool.connect();
      let statusBehindOpenTxMs: number;
      try {
        await blocker.query('BEGIN');
        await blocker.query('SELECT pg_current_xact_id()');
        await outbox.publish(pool, 'live', { late: true });
        statusBehindOpenTxMs = await medianMs(() => outbox.status());
      } finally {
        await blocker.query('ROLLBACK');
        blocker.release();
      }
      const journeyMs = await medianMs(() => outbox.journey(String(Math.max(1, Math.floor(history / 2)))));
      const status = await outbox.status();
      levels.push({
        history,
        statusMs,
        statusBehindOpenTxMs,
        journeyMs,
        doneLastHour: status.subscriptions[0]?.doneLastHour ?? 0,
      });
      ctx.log(`status-scale ${JSON.stringify(levels.at(-1))}`);
    }
  } finally {
    await pool.end();
  }
  return {
    name: 'status-scale',
    title: '10. status() and journey() over a long history',
    method: [
      'Finished history (messages published over the last 7 days, each done in one subscription, 1 in 100 with a ' +
        'failure row) grown to each level, with 10,000 pending deliveries and the relay caught up. Median of ' +
        `${CALLS} calls; "behind an open transaction": another session holds a transaction with an xid open and ` +
        'one message waits for the relay.',
    ],
    tables: [
      {
        caption: 'Milliseconds per call (median)',
        table: {
          headers: [
            'finished messages',
            'status()',
            'status() behind an open transaction',
            'journey()',
            'done last hour',
          ],
          rows: levels.map((l) => [
            int(l.history),
            l.statusMs.toFixed(1),
            l.statusBehindOpenTxMs.toFixed(1),
            l.journeyMs.toFixed(2),
            int(l.doneLastHour),
          ]),
        },
      },
    ],
    ratios: [],
    targets: [],
    notes: ['Reproduce: `npm run bench:status-scale` (BENCH_STATUS_HISTORY sets the largest level).'],
  };
}
