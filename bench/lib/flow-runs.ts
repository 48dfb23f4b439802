import { pino } from 'pino';
import { createOutbox, type FlowOptions, type PublishInput } from '../../src/index.js';
import type { BenchContext } from './context.js';
import { count, createPool, dropSchemas, waitFor } from './db.js';
import { mostInFlightPerKey, readHandOuts, type HandOuts } from './flow-measure.js';
import { runConsumers, type FlowConsumerConfig } from './flow-processes.js';

/** One run of the flow-control scenario: this schema, dropped and made again, one subscription, one topic. */
export const FLOW_SCHEMA = 'bench_flow';
const TOPIC = 'bench.flow';
const SUBSCRIPTION = 'flow';
/** Competing consumer processes, each with a pool of this size. */
export const PROCESSES = 3;
export const POOL_MAX = 6;

/** A fresh schema with the subscription declared, `messages` published and fanned out before any consumer runs. */
async function prepare(ctx: BenchContext, messages: PublishInput[], limits: FlowOptions): Promise<void> {
  await dropSchemas(ctx.pool, FLOW_SCHEMA);
  const pool = createPool(ctx.url, 4);
  const outbox = createOutbox({
    pool,
    schema: FLOW_SCHEMA,
    logger: pino({ level: 'warn' }, process.stderr),
    relay: { enabled: true, batchSize: 5000 },
  });
  try {
    await outbox.migrate();
    await outbox.declareSubscription(SUBSCRIPTION, { topics: [TOPIC], ...limits });
    for (let i = 0; i < messages.length; i += 1000) {
      await outbox.publishMany(pool, messages.slice(i, i + 1000));
    }
    await outbox.start();
    await waitFor(
      'the relay to fan out every message',
      async () =>
        (await count(pool, `SELECT count(*) AS n FROM ${FLOW_SCHEMA}.deliveries`)) >= messages.length,
    );
    await outbox.stop();
  } finally {
    await pool.end();
  }
  // As the other scenarios do: the statistics autovacuum would have gathered (it may be off on the server).
  await ctx.pool.query(`VACUUM ANALYZE ${FLOW_SCHEMA}.messages`);
  await ctx.pool.query(`VACUUM ANALYZE ${FLOW_SCHEMA}.deliveries`);
}

/** PROCESSES consumer processes on the waiting deliveries until all `n` are acked; the audit trail's figures. */
async function drain(
  ctx: BenchContext,
  n: number,
  consumer: Pick<FlowConsumerConfig, 'sleepMs' | 'record' | 'concurrency'>,
  timeoutMs: number,
) {
  const config: FlowConsumerConfig = {
    url: ctx.url,
    schema: FLOW_SCHEMA,
    subscription: SUBSCRIPTION,
    topics: [TOPIC],
    poolMax: POOL_MAX,
    ...consumer,
  };
  const acked = async () =>
    (await count(ctx.pool, `SELECT count(*) AS n FROM ${FLOW_SCHEMA}.completed_deliveries`)) >= n;
  const outcome = await runConsumers(Array<FlowConsumerConfig>(PROCESSES).fill(config), () =>
    waitFor(`${n} deliveries acked`, acked, { timeoutMs, intervalMs: 20 }),
  );
  return { ...outcome, ...(await readHandOuts(ctx.pool, FLOW_SCHEMA, SUBSCRIPTION)) };
}

export interface RateRun extends HandOuts {
  /** Hand-outs per second: (n − burst) / span with a limit (the bucket starts full), n / span without. */
  achieved: number;
  /** Messages per second from the first hand-out to the last completion. */
  drained: number;
  errors: string[];
}

/** `n` waiting messages drained by no-op handlers (consumer defaults) under a rate limit, or none. */
export async function rateRun(ctx: BenchContext, perSecond: number | null, n: number): Promise<RateRun> {
  const messages = Array.from({ length: n }, (_, i) => ({ topic: TOPIC, payload: { i } }));
  await prepare(ctx, messages, perSecond === null ? {} : { rateLimit: { perSecond } });
  const burst = await count(
    ctx.pool,
    `SELECT coalesce(rate_burst, 0) AS n FROM ${FLOW_SCHEMA}.subscriptions`,
  );
  const timeoutMs = 60_000 + (perSecond === null ? 0 : (3_000 * n) / perSecond);
  const result = await drain(ctx, n, { sleepMs: 0, record: false }, timeoutMs);
  return { ...result, achieved: (result.n - burst) / result.spanS, drained: result.n / result.drainS };
}

export interface KeyWorkload {
  keys: number;
  perKey: number;
  /** Each handler call sleeps this long. */
  sleepMs: number;
  /** Handlers per process (concurrency). */
  handlers: number;
}

/** The workload's keys, `perKey` messages each, interleaved, with a keyless message after every tenth. */
export function keyedMessages(w: KeyWorkload): PublishInput[] {
  const messages: PublishInput[] = [];
  for (let i = 0; i < w.keys * w.perKey; i++) {
    messages.push({ topic: TOPIC, key: `k${i % w.keys}`, payload: { i } });
    if (i % 10 === 9) messages.push({ topic: TOPIC, payload: { i, keyless: true } });
  }
  return messages;
}

export interface KeyRun {
  /** Messages per second from the first hand-out to the last completion. */
  drained: number;
  /** The most handler calls of one key that overlapped, over all keys and processes. */
  most: number;
  /** Keys whose most overlapping calls reached the limit. */
  keysAtLimit: number;
  handled: number;
  consumers: number;
  errors: string[];
}

/** The workload drained under a per-key concurrency limit, or none, every handler call recorded. */
export async function keyRun(ctx: BenchContext, perKey: number | null, w: KeyWorkload): Promise<KeyRun> {
  const messages = keyedMessages(w);
  await prepare(ctx, messages, perKey === null ? {} : { keyConcurrency: perKey });
  const result = await drain(
    ctx,
    messages.length,
    { sleepMs: w.sleepMs, record: true, concurrency: w.handlers },
    120_000,
  );
  const most = [...mostInFlightPerKey(result.handled).values()];
  return {
    drained: result.n / result.drainS,
    most: Math.max(0, ...most),
    keysAtLimit: most.filter((m) => m === perKey).length,
    handled: result.handled.length,
    consumers: result.consumers,
    errors: result.errors,
  };
}
