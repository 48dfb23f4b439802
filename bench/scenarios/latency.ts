import { setTimeout as delay } from 'node:timers/promises';
import type pg from 'pg';
import { dropBusinessSchema, insertOrder, resetBusinessTable } from '../lib/business.js';
import type { BenchContext } from '../lib/context.js';
import { Countdown } from '../lib/countdown.js';
import { createPool, preciseNow } from '../lib/db.js';
import { latencySystems } from '../lib/peers.js';
import type { ScenarioReport } from '../lib/report.js';
import { distribution, median, summarize, type Distribution } from '../lib/stats.js';
import type { QueueSystem } from '../lib/system.js';
import { int, ms, range, ratio } from '../lib/table.js';

/**
 * Scenario 4, latency: a steady producer commits one business row + one message per transaction at a fixed rate
 * for a bounded time while the consumers idle-wait; each message carries the wall-clock time taken just before
 * its publish statement, the last statement before COMMIT, and the handler records now − stamp: both with
 * preciseNow(), the wall clock, which a peer in a Node 24 child reads in its own process (HandledAt), so no IPC
 * time enters its figure. Producers run open-loop (a late commit does not delay the next one) on 4 connections.
 */
const PRODUCER_CONNECTIONS = 4;

async function sendOne(producers: pg.Pool, system: QueueSystem, n: number): Promise<void> {
  const client = await producers.connect();
  try {
    await client.query('BEGIN');
    await insertOrder(client, n);
    await system.publish(client, [{ payload: { n, stamp: preciseNow() } }]);
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

interface LatencyRun {
  latencies: Distribution;
  /** How far the producer fell behind its schedule: a large value means the machine could not keep the rate. */
  maxProducerLagMs: number;
}

async function runOnce(ctx: BenchContext, system: QueueSystem, producers: pg.Pool): Promise<LatencyRun> {
  const { latencyRate: rate, latencySeconds: seconds } = ctx.config;
  const total = rate * seconds;
  await system.reset();
  await resetBusinessTable(ctx.pool);
  const latencies: number[] = [];
  const warm = new Countdown(1);
  const done = new Countdown(total);
  await system.start((p, at) => {
    const now = at?.preciseMs ?? preciseNow();
    if (p.n < 0) return warm.hit();
    latencies.push(now - (p.stamp ?? NaN));
    done.hit();
  });
  try {
    // One message through the whole path first, so the clock starts with every consumer connected and idle.
    await sendOne(producers, system, -1);
    await warm.wait(`${system.label} warm-up message`, 30_000);
    const started = preciseNow();
    let maxLag = 0;
    const sends: Promise<void>[] = [];
    for (let i = 0; i < total; i++) {
      const due = started + (i * 1000) / rate;
      const early = due - preciseNow();
      if (early > 0) await delay(early);
      maxLag = Math.max(maxLag, preciseNow() - due);
      sends.push(sendOne(producers, system, i));
    }
    await Promise.all(sends);
    await done.wait(`${system.label} handling every message`, 60_000);
    return { latencies: distribution(latencies), maxProducerLagMs: maxLag };
  } finally {
    await system.stop();
  }
}

export async function latencyScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const { latencyRate: rate, latencySeconds: seconds } = ctx.config;
  const systems = latencySystems(ctx.url, ctx.node24);
  const [ours] = systems;
  const producers = createPool(ctx.url, PRODUCER_CONNECTIONS);
  const runs = new Map<QueueSystem, LatencyRun[]>(systems.map((s) => [s, []]));
  try {
    for (let rep = 1; rep <= ctx.config.reps; rep++) {
      for (const system of systems) {
        const run = await runOnce(ctx, system, producers);
        runs.get(system)?.push(run);
        const l = run.latencies;
        ctx.log(
          `latency rep ${rep} ${system.label}: p50 ${ms(l.p50)} p99 ${ms(l.p99)} max ${ms(l.max)} ms ` +
            `(producer lag ≤ ${ms(run.maxProducerLagMs)} ms)`,
        );
      }
    }
  } finally {
    await producers.end();
    for (const system of systems) await system.close();
    await dropBusinessSchema(ctx.pool);
  }

  const pick = (s: QueueSystem, f: (r: LatencyRun) => number) => (runs.get(s) ?? []).map(f);
  const med = (s: QueueSystem, f: (r: LatencyRun) => number) => median(pick(s, f));
  const rows = systems.map((s) => {
    const p99 = summarize(pick(s, (r) => r.latencies.p99));
    return [
      s.label,
      ms(med(s, (r) => r.latencies.p50)),
      ms(med(s, (r) => r.latencies.p95)),
      ms(p99.median),
      range(p99.min, p99.max, ms),
      ms(med(s, (r) => r.latencies.max)),
      ms(Math.max(...pick(s, (r) => r.maxProducerLagMs))),
    ];
  });
  const oursP99 = med(ours, (r) => r.latencies.p99);
  return {
    name: 'latency',
    title: '4. Commit → handler latency',
    method: [
      `A producer commits ${rate} transactions/s (one business row + one message each) for ${seconds} s ` +
        `(${int(rate * seconds)} messages), open-loop on ${PRODUCER_CONNECTIONS} connections, while consumers idle-wait. ` +
        'Latency = handler time − a stamp taken just before the publish statement (the last one before COMMIT), ' +
        'so it includes that INSERT and the COMMIT. Percentiles per repetition; the table shows their medians.',
      'A warm-up message goes through each system before its clock starts.',
      'The peers marked Node 24 run their handlers in a child process, which stamps each handler call with its own ' +
        'wall clock (performance.timeOrigin + performance.now(), as the producer’s stamp); the IPC that reports it ' +
        'is not in the figure.',
      ...systems.map((s) => `${s.label}: ${s.settings}`),
    ],
    tables: [
      {
        caption: 'Latency in ms (median over repetitions of each percentile; p99 spread = min–max)',
        table: {
          headers: ['system', 'p50', 'p95', 'p99', 'p99 spread', 'max', 'producer lag max'],
          rows,
        },
      },
    ],
    ratios: systems
      .filter((s) => s !== ours)
      .map(
        (s) =>
          `ours / ${s.label}: p50 ${ratio(med(ours, (r) => r.latencies.p50) / med(s, (r) => r.latencies.p50))}, ` +
          `p99 ${ratio(oursP99 / med(s, (r) => r.latencies.p99))} (below 1 = ours is faster)`,
      ),
    targets: [
      {
        target: 'latency p99 ≤ 20 ms',
        met: oursP99 <= 20,
        detail: `pg-outbox p99 ${ms(oursP99)} ms (median of ${ctx.config.reps} repetitions)`,
      },
    ],
    notes: [
      'The Node 24 peers run in a process of their own: their handlers and wake-ups do not share the event loop ' +
        'of the producers, which the in-process systems do (2 cores in all, so the machine is still shared).',
      'A producer lag of more than a few ms means the machine could not hold the rate during that run; ' +
        'its latencies then include queueing in the producer.',
    ],
  };
}
