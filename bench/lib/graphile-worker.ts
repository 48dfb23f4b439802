import { Logger, run, runMigrations, type Runner } from 'graphile-worker';
import type pg from 'pg';
import { count, createPool, dropSchemas } from './db.js';
import type { BenchPayload, DeliveryHandler, OutgoingMessage, QueueSystem } from './system.js';

const TASK = 'bench';

/**
 * graphile-worker 0.17 with the configuration of its performance page (worker.graphile.org/docs/performance):
 * concurrentJobs 24 with maxPoolSize 25, a local queue of 500 jobs fetched in one query, and batched completion
 * (completeJobBatchDelay / failJobBatchDelay 0). New jobs wake it through its LISTEN/NOTIFY (add_job notifies in
 * the producer's transaction); pollInterval only matters for jobs that become due later (run_at), so it is set to
 * 100 ms instead of the default 2 s, which the lateness scenario would otherwise just measure.
 */
const GRAPHILE_TUNING = { concurrency: 24, localQueueSize: 500, pollInterval: 100, poolMax: 25 };

/** Logs only warnings and errors: its info lines (worker started, ...) would drown the tables. */
const quietLogger = new Logger(() => (level, message) => {
  const l = level as string;
  if (l === 'error' || l === 'warning') console.warn(`[bench] graphile-worker ${l}: ${message}`);
});

export interface GraphileOptions {
  url: string;
  schema?: string;
}

export function graphileWorkerSystem(options: GraphileOptions): QueueSystem {
  const { url, schema = 'bench_graphile' } = options;
  const pool = createPool(url, GRAPHILE_TUNING.poolMax);
  // graphile-worker asks for an 'error' listener on every checked-out client too (err.red/wpeh).
  pool.on('connect', (client) => {
    client.on('error', (error) => console.warn(`[bench] graphile-worker connection lost: ${error.message}`));
  });
  let runner: Runner | null = null;

  const stopRunner = async () => {
    const r = runner;
    runner = null;
    await r?.stop();
  };
  const spec = (m: OutgoingMessage) => ({
    identifier: TASK,
    payload: m.payload,
    run_at: m.deliverAt?.toISOString() ?? null,
  });

  return {
    label: 'graphile-worker',
    settings:
      `schema ${schema}; concurrency ${GRAPHILE_TUNING.concurrency}, localQueue.size ` +
      `${GRAPHILE_TUNING.localQueueSize}, completeJobBatchDelay 0, failJobBatchDelay 0, pollInterval ` +
      `${GRAPHILE_TUNING.pollInterval} ms, LISTEN/NOTIFY, pool max ${GRAPHILE_TUNING.poolMax}`,
    publishPath: `SELECT ${schema}.add_job(...) for one message, ${schema}.add_jobs(...) for many (NOTIFY inside)`,
    async reset() {
      await stopRunner();
      await dropSchemas(pool, schema);
      await runMigrations({ pgPool: pool, schema, logger: quietLogger });
    },
    async publish(client: pg.PoolClient, messages) {
      const first = messages[0];
      if (messages.length === 1 && first !== undefined) {
        await client.query(
          `SELECT 1 FROM ${schema}.add_job(identifier => $1::text, payload => $2::json, run_at => $3::timestamptz)`,
          [TASK, JSON.stringify(first.payload), first.deliverAt?.toISOString() ?? null],
        );
        return;
      }
      // The statement graphile-worker's own addJobs() runs.
      await client.query(
        `SELECT 1 FROM ${schema}.add_jobs(ARRAY(SELECT json_populate_recordset(null::${schema}.job_spec, $1::json)))`,
        [JSON.stringify(messages.map(spec))],
      );
    },
    async prepare() {
      await pool.query(`VACUUM ANALYZE ${schema}._private_jobs`);
    },
    async start(handler: DeliveryHandler) {
      runner = await run({
        pgPool: pool,
        schema,
        concurrency: GRAPHILE_TUNING.concurrency,
        pollInterval: GRAPHILE_TUNING.pollInterval,
        noHandleSignals: true,
        logger: quietLogger,
        taskList: {
          [TASK]: (payload) => {
            handler(payload as BenchPayload);
          },
        },
        preset: {
          worker: {
            localQueue: { size: GRAPHILE_TUNING.localQueueSize },
            completeJobBatchDelay: 0,
            failJobBatchDelay: 0,
          },
        },
      });
    },
    stop: stopRunner,
    // Completed jobs are deleted from its jobs table.
    unacked: () => count(pool, `SELECT count(*) AS n FROM ${schema}._private_jobs`),
    async close() {
      await stopRunner();
      await dropSchemas(pool, schema);
      await pool.end();
    },
  };
}
