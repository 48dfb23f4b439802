import type pg from 'pg';
import { count, createPool, dropSchemas } from './db.js';
import type { BenchPayload, DeliveryHandler, OutgoingMessage, PeerSystem } from './system.js';

const TASK = 'bench';

/**
 * graphile-worker with the configuration of its performance page (worker.graphile.org/docs/performance):
 * concurrentJobs 24 with maxPoolSize 25, a local queue of 500 jobs fetched in one query, and batched completion
 * (completeJobBatchDelay / failJobBatchDelay 0). New jobs wake it through its LISTEN/NOTIFY (add_job notifies in
 * the producer's transaction); pollInterval only matters for jobs that become due later (run_at), so it is set to
 * 100 ms instead of the default 2 s, which the lateness scenario would otherwise just measure. 0.17 and 0.18 take
 * the same options (0.18 is ESM-only and needs Node 22+).
 */
const GRAPHILE_TUNING = { concurrency: 24, localQueueSize: 500, pollInterval: 100, poolMax: 25 };

type LogLine = (level: string, message: string) => void;

/**
 * The part of graphile-worker's module the bench uses, typed structurally: 0.17's and 0.18's own declarations
 * are separate classes (private fields), so neither module's types accept the other's, while the calls are the
 * same. L is the version's Logger.
 */
export interface GraphileModule<L> {
  Logger: new (factory: (scope: object) => LogLine) => L;
  runMigrations: (options: { pgPool: pg.Pool; schema: string; logger: L }) => Promise<void>;
  run: (options: {
    pgPool: pg.Pool;
    schema: string;
    concurrency: number;
    pollInterval: number;
    noHandleSignals: boolean;
    logger: L;
    taskList: Record<string, (payload: unknown) => void>;
    preset: {
      worker: { localQueue: { size: number }; completeJobBatchDelay: number; failJobBatchDelay: number };
    };
  }) => Promise<{ stop(): Promise<void> }>;
}

/** One graphile-worker version: graphile-worker-0.17.ts and graphile-worker-0.18.ts. */
export interface GraphileLibrary<L> {
  /** 'graphile-worker 0.17'. */
  name: string;
  module: GraphileModule<L>;
}

export interface GraphileOptions {
  url: string;
  label?: string;
  schema?: string;
}

export function graphileWorkerSystem<L>(library: GraphileLibrary<L>, options: GraphileOptions): PeerSystem {
  const { url, schema = 'bench_graphile' } = options;
  const { Logger, run, runMigrations } = library.module;
  // Logs only warnings and errors: its info lines (worker started, ...) would drown the tables.
  const quietLogger = new Logger(() => (level, message) => {
    if (level === 'error' || level === 'warning')
      console.warn(`[bench] ${library.name} ${level}: ${message}`);
  });
  const pool = createPool(url, GRAPHILE_TUNING.poolMax);
  // graphile-worker asks for an 'error' listener on every checked-out client too (err.red/wpeh).
  pool.on('connect', (client) => {
    client.on('error', (error) => console.warn(`[bench] ${library.name} connection lost: ${error.message}`));
  });
  let runner: { stop(): Promise<void> } | null = null;

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
    label: options.label ?? library.name,
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
    async publish(client, messages) {
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
