/*
 * One consumer process of the flow-control scenario, started by runConsumers (bench/lib/flow-processes.ts): its own
 * pg Pool and Outbox (relay off) on the parent's schema, one subscription running with its stored limits. Reads its
 * FlowConsumerConfig as JSON from FLOW_CONSUMER and writes one JSON event per stdout line: `ready` once built,
 * `started` after the parent's `go` line on stdin, and on SIGTERM (or when stdin closes) `stopped` with the
 * handler calls it recorded, after outbox.stop() drained. pg-outbox's log lines go to stderr.
 */
import { createInterface } from 'node:readline';
import { setTimeout as delay } from 'node:timers/promises';
import { pino } from 'pino';
import { createOutbox } from '../../src/index.js';
import { createPool, preciseNow } from './db.js';
import type { FlowConsumerConfig, FlowConsumerEvent, HandledInterval } from './flow-processes.js';

const config = JSON.parse(process.env['FLOW_CONSUMER'] ?? '') as FlowConsumerConfig;

function emit(event: FlowConsumerEvent, then?: () => void): void {
  process.stdout.write(`${JSON.stringify(event)}\n`, then);
}

const pool = createPool(config.url, config.poolMax);
const outbox = createOutbox({
  pool,
  schema: config.schema,
  logger: pino({ level: 'warn' }, process.stderr),
  relay: { enabled: false },
});
outbox.on('error', (error) => emit({ event: 'error', message: String(error) }));

const handled: HandledInterval[] = [];
outbox.subscribe(
  config.subscription,
  {
    topics: config.topics,
    ...(config.batchSize === undefined ? {} : { batchSize: config.batchSize }),
    ...(config.concurrency === undefined ? {} : { concurrency: config.concurrency }),
  },
  async (m) => {
    const start = preciseNow();
    if (config.sleepMs > 0) await delay(config.sleepMs);
    if (config.record) handled.push({ key: m.key, start, end: preciseNow() });
  },
);

let stopping: Promise<void> | null = null;
function shutdown(): Promise<void> {
  stopping ??= (async () => {
    await outbox.stop();
    await pool.end();
    emit({ event: 'stopped', handled }, () => process.exit(0));
  })();
  return stopping;
}

process.once('SIGTERM', () => void shutdown());
const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line !== 'go') return;
  outbox.start().then(
    () => emit({ event: 'started' }),
    (error: unknown) => {
      emit({ event: 'error', message: String(error) });
      void shutdown();
    },
  );
});
input.on('close', () => void shutdown());
emit({ event: 'ready' });
