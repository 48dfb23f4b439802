import { pino } from 'pino';
import { createOutbox } from '../../src/index.js';
import { rawPublish, type RawPublish } from './broker-publish.js';
import { benchPayload, FORWARD_TOPIC, noBrokerSink, type BrokerSink } from './brokers.js';
import type { BenchContext } from './context.js';
import { countedTarget, type PipelineStats } from './counted-target.js';
import { startCpuMeter, type CpuUse } from './cpu-meter.js';
import { count, createPool, dropSchemas, preciseNow, waitFor } from './db.js';

/** Every forward run: this schema, dropped and made again, with one subscription on the one topic. */
export const FORWARD_SCHEMA = 'bench_forward';
const SUBSCRIPTION = 'forward';
/** The README's sizing of one lease-mode subscription (up to three pool connections), with room to poll. */
export const FORWARD_POOL_MAX = 5;
const PUBLISH_CHUNK = 1000;
/** The cheap poll of a run: one row, if any is left, not a count of all of them. */
const ANY_LEFT = `SELECT 1 FROM ${FORWARD_SCHEMA}.deliveries LIMIT 1`;

/** A fresh schema with the subscription declared and `n` messages published and fanned out by a relay. */
async function prepareBacklog(ctx: BenchContext, n: number): Promise<void> {
  await dropSchemas(ctx.pool, FORWARD_SCHEMA);
  const pool = createPool(ctx.url, 4);
  const outbox = createOutbox({
    pool,
    schema: FORWARD_SCHEMA,
    logger: pino({ level: 'warn' }, process.stderr),
    relay: { enabled: true, batchSize: 5000 },
  });
  try {
    await outbox.migrate();
    await outbox.declareSubscription(SUBSCRIPTION, { topics: [FORWARD_TOPIC] });
    for (let i = 0; i < n; i += PUBLISH_CHUNK) {
      const chunk = Array.from({ length: Math.min(PUBLISH_CHUNK, n - i) }, (_, j) => ({
        topic: FORWARD_TOPIC,
        payload: benchPayload(i + j),
      }));
      await outbox.publishMany(pool, chunk);
    }
    await outbox.start();
    await waitFor(
      'the relay to fan out every message',
      async () => (await count(pool, `SELECT count(*) AS n FROM ${FORWARD_SCHEMA}.deliveries`)) >= n,
      { intervalMs: 20 },
    );
    await outbox.stop();
  } finally {
    await pool.end();
  }
  // As the other scenarios do: the statistics autovacuum would have gathered (it may be off on the server).
  await ctx.pool.query(`VACUUM ANALYZE ${FORWARD_SCHEMA}.messages`);
  await ctx.pool.query(`VACUUM ANALYZE ${FORWARD_SCHEMA}.deliveries`);
}

/** forward()'s settings for a run; null leaves its defaults (batchSize 1000, concurrency 200). */
export type ForwardSettings = { concurrency: number; batchSize: number } | null;

export interface ForwardRun {
  n: number;
  /** Messages per second from outbox.start() until the deliveries table is empty (every delivery settled). */
  wallRate: number;
  /** Messages per second from the first hand-out to the last ack (audit trail, the database's clock). */
  spanRate: number;
  done: number;
  dead: number;
  /** Attempts that failed (delivery_failures rows): a publish the broker refused or that timed out. */
  failures: number;
  /** What the broker holds after the run. */
  received: number;
  /** Claim statements that handed the deliveries out, and ack statements that settled them. */
  claims: number;
  acks: number;
  errors: string[];
  pipeline: PipelineStats;
  cpu: CpuUse;
}

/** The subscription's settled deliveries as the audit trail recorded them. */
async function readOutcome(ctx: BenchContext) {
  const { rows } = await ctx.pool.query<{
    done: number;
    dead: number;
    failures: number;
    span_s: number;
    claims: number;
    acks: number;
  }>(
    // now() is a statement's transaction start: distinct attempt times count the claim statements that handed the
    // deliveries out, distinct completion times the ack statements that settled them.
    `SELECT (SELECT count(*) FROM ${FORWARD_SCHEMA}.completed_deliveries WHERE outcome = 'done')::int AS done,
            (SELECT count(DISTINCT last_attempt_at) FROM ${FORWARD_SCHEMA}.completed_deliveries)::int AS claims,
            (SELECT count(DISTINCT completed_at) FROM ${FORWARD_SCHEMA}.completed_deliveries)::int AS acks,
            (SELECT count(*) FROM ${FORWARD_SCHEMA}.dead_deliveries)::int AS dead,
            (SELECT count(*) FROM ${FORWARD_SCHEMA}.delivery_failures)::int AS failures,
            (SELECT extract(epoch FROM max(completed_at) - min(coalesce(first_attempt_at, last_attempt_at)))
             FROM ${FORWARD_SCHEMA}.completed_deliveries)::float8 AS span_s`,
  );
  const row = rows[0];
  return {
    done: row?.done ?? 0,
    dead: row?.dead ?? 0,
    failures: row?.failures ?? 0,
    spanS: row?.span_s ?? NaN,
    claims: row?.claims ?? 0,
    acks: row?.acks ?? 0,
  };
}

/**
 * `n` waiting messages forwarded to the sink's broker by an Outbox with the relay off and forward() as its only
 * consumer, timed until every delivery has settled; the broker then counts what it holds.
 */
export async function forwardRun(
  ctx: BenchContext,
  sink: BrokerSink,
  settings: ForwardSettings,
  n: number,
): Promise<ForwardRun> {
  await prepareBacklog(ctx, n);
  await sink.reset();
  const pool = createPool(ctx.url, FORWARD_POOL_MAX);
  const outbox = createOutbox({
    pool,
    schema: FORWARD_SCHEMA,
    logger: pino({ level: 'warn' }, process.stderr),
    relay: { enabled: false },
  });
  const errors: string[] = [];
  outbox.on('error', (error) => errors.push(String(error)));
  const counted = countedTarget(sink.target());
  outbox.forward(SUBSCRIPTION, { topics: [FORWARD_TOPIC], to: counted.target, ...(settings ?? {}) });
  let wallMs: number;
  let cpu: CpuUse;
  try {
    const start = preciseNow();
    const meter = startCpuMeter();
    await outbox.start();
    // Acked rows leave deliveries (dead ones too), so an empty table means every delivery has settled.
    await waitFor(
      `${n} deliveries forwarded to ${sink.name}`,
      async () => (await count(ctx.pool, `SELECT count(*) AS n FROM (${ANY_LEFT}) s`)) === 0,
      { timeoutMs: 180_000, intervalMs: 10 },
    );
    wallMs = preciseNow() - start;
    cpu = meter();
  } finally {
    await outbox.stop();
    await pool.end();
  }
  const outcome = await readOutcome(ctx);
  return {
    n,
    wallRate: n / (wallMs / 1000),
    spanRate: outcome.done / outcome.spanS,
    ...outcome,
    received: await sink.received(),
    errors,
    pipeline: counted.stats(),
    cpu,
  };
}

export interface RawRun {
  n: number;
  rate: number;
  /** Mean milliseconds from a publish to its confirm; NaN when all are fired before any confirm is awaited. */
  latencyMs: number;
  received: number;
  cpu: CpuUse;
}

/** `n` messages published straight to the sink's broker, with the same client library in this process. */
export async function rawRun(sink: BrokerSink, how: RawPublish, n: number): Promise<RawRun> {
  await sink.reset();
  const meter = startCpuMeter();
  const { elapsedMs, latencyMs } = await rawPublish(how, n);
  const cpu = meter();
  return { n, rate: n / (elapsedMs / 1000), latencyMs, received: await sink.received(), cpu };
}

/** A loaded raw publish also says whether the load outlasted it (else the figure is partly unloaded). */
export interface LoadedRawRun extends RawRun {
  overlapped: boolean;
}

/**
 * The raw publish again, while this process also runs pg-outbox's side of forwarding (`load` messages forwarded to
 * the no-broker target, claims and acks on the same Postgres): what the broker's rate is on this machine while
 * the database does the forwarder's work beside it. Started once the load has acked its first delivery.
 */
export async function loadedRawRun(
  ctx: BenchContext,
  sink: BrokerSink,
  how: RawPublish,
  n: number,
  load: number,
): Promise<LoadedRawRun> {
  let loadDone = false;
  const loading = forwardRun(ctx, noBrokerSink(), null, load).finally(() => (loadDone = true));
  // Handled here so that a load failing mid-publish is not an unhandled rejection; awaited below, it still throws.
  loading.catch(() => undefined);
  const acked = `SELECT count(*) AS n FROM (SELECT 1 FROM ${FORWARD_SCHEMA}.completed_deliveries LIMIT 1) s`;
  // The schema does not exist until the load has made it: a failed poll means not yet.
  await waitFor('the load to ack its first delivery', async () =>
    loadDone ? true : (await count(ctx.pool, acked).catch(() => 0)) > 0,
  );
  const run = await rawRun(sink, how, n);
  const overlapped = !loadDone;
  await loading;
  return { ...run, overlapped };
}
