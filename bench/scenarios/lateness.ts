import type { BenchContext } from '../lib/context.js';
import { Countdown } from '../lib/countdown.js';
import { publishAll } from '../lib/load.js';
import { latencySystems } from '../lib/peers.js';
import type { ScenarioReport } from '../lib/report.js';
import { distribution, median, summarize, type Distribution } from '../lib/stats.js';
import type { OutgoingMessage, QueueSystem } from '../lib/system.js';
import { int, ms, range } from '../lib/table.js';

/**
 * Scenario 5, delayed lateness: N messages with due times spread evenly over a window, all published (100 per
 * transaction) before the first one is due, while the consumers idle-wait. Lateness = handler time − due time.
 * The due time is an absolute timestamp computed in Node (pg-outbox deliverAt, pg-boss startAfter,
 * graphile-worker run_at); each system compares it with Postgres's now(), and the handler with Date.now(): the
 * same machine clock, which is fine for a benchmark and never done in the library. A peer in a Node 24 child reads
 * Date.now() in its own process as its handler is called (HandledAt).
 */
const LEAD_MS = 2_000;

interface LatenessRun {
  lateness: Distribution;
  early: number;
}

async function runOnce(ctx: BenchContext, system: QueueSystem): Promise<LatenessRun> {
  const { latenessN: n, latenessWindowSeconds: window } = ctx.config;
  await system.reset();
  const lateness: number[] = [];
  const warm = new Countdown(1);
  const done = new Countdown(n);
  await system.start((p, at) => {
    const now = at?.dateMs ?? Date.now();
    if (p.n < 0) return warm.hit();
    lateness.push(now - (p.dueMs ?? NaN));
    done.hit();
  });
  try {
    await publishAll(ctx.pool, system, [{ payload: { n: -1 } }], 1);
    await warm.wait(`${system.label} warm-up message`, 30_000);
    const first = Date.now() + LEAD_MS;
    const messages: OutgoingMessage[] = Array.from({ length: n }, (_, i) => {
      const dueMs = first + Math.floor((i * window * 1000) / n);
      return { payload: { n: i, dueMs }, deliverAt: new Date(dueMs) };
    });
    await publishAll(ctx.pool, system, messages, 100);
    if (Date.now() > first)
      ctx.log(`lateness: publishing to ${system.label} outlasted the ${LEAD_MS} ms lead`);
    await done.wait(`${system.label} handling every delayed message`, LEAD_MS + window * 1000 + 60_000);
    return { lateness: distribution(lateness), early: lateness.filter((l) => l < 0).length };
  } finally {
    await system.stop();
  }
}

export async function latenessScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const { latenessN: n, latenessWindowSeconds: window } = ctx.config;
  const systems = latencySystems(ctx.url, ctx.node24);
  const [ours] = systems;
  const runs = new Map<QueueSystem, LatenessRun[]>(systems.map((s) => [s, []]));
  try {
    for (let rep = 1; rep <= ctx.config.reps; rep++) {
      for (const system of systems) {
        const run = await runOnce(ctx, system);
        runs.get(system)?.push(run);
        const l = run.lateness;
        ctx.log(
          `lateness rep ${rep} ${system.label}: p50 ${ms(l.p50)} p99 ${ms(l.p99)} max ${ms(l.max)} ms, early ${run.early}`,
        );
      }
    }
  } finally {
    for (const system of systems) await system.close();
  }

  const pick = (s: QueueSystem, f: (r: LatenessRun) => number) => (runs.get(s) ?? []).map(f);
  const med = (s: QueueSystem, f: (r: LatenessRun) => number) => median(pick(s, f));
  const oursP99 = med(ours, (r) => r.lateness.p99);
  return {
    name: 'lateness',
    title: '5. Delayed delivery: lateness after the due time',
    method: [
      `${int(n)} messages due evenly over ${window} s, starting ${LEAD_MS} ms after publishing begins; all published ` +
        'before the first is due (100 per transaction), consumers idle-waiting. Lateness = handler Date.now() − due ' +
        'time, in ms (a Node 24 peer’s handler reads Date.now() in its child process). Percentiles per repetition; the table shows their medians; early = handled before the due time ' +
        '(summed over repetitions).',
      ...systems.map((s) => `${s.label}: publish with ${s.publishPath}; consumers: ${s.settings}`),
    ],
    tables: [
      {
        caption: 'Lateness in ms (median over repetitions; p99 spread = min–max)',
        table: {
          headers: ['system', 'p50', 'p95', 'p99', 'p99 spread', 'max', 'early'],
          rows: systems.map((s) => {
            const p99 = summarize(pick(s, (r) => r.lateness.p99));
            return [
              s.label,
              ms(med(s, (r) => r.lateness.p50)),
              ms(med(s, (r) => r.lateness.p95)),
              ms(p99.median),
              range(p99.min, p99.max, ms),
              ms(med(s, (r) => r.lateness.max)),
              int(pick(s, (r) => r.early).reduce((a, b) => a + b, 0)),
            ];
          }),
        },
      },
    ],
    ratios: systems
      .filter((s) => s !== ours)
      .map(
        (s) => `${s.label} p99 lateness = ${ms(med(s, (r) => r.lateness.p99))} ms vs ours ${ms(oursP99)} ms`,
      ),
    targets: [
      {
        target: 'delayed lateness p99 ≤ 10 ms',
        met: oursP99 <= 10,
        detail: `pg-outbox p99 ${ms(oursP99)} ms (median of ${ctx.config.reps} repetitions)`,
      },
      {
        target: 'no message handled before its due time',
        met: pick(ours, (r) => r.early).every((e) => e === 0),
        detail: `pg-outbox early: ${pick(ours, (r) => r.early).join(', ')}`,
      },
    ],
    notes: [
      'The old bench/delay-lateness.ts ran an immediate-topic load next to the delayed messages; this scenario ' +
        'keeps the systems idle apart from the delayed messages, so that every system sees the same work.',
    ],
  };
}
