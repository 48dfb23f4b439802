import { insertOrder, resetBusinessTable, dropBusinessSchema } from '../lib/business.js';
import { graphileWorker018System, pgBoss12System } from '../lib/child-system.js';
import type { BenchContext } from '../lib/context.js';
import { createPool, preciseNow } from '../lib/db.js';
import { graphileWorkerSystem } from '../lib/graphile-worker.js';
import { graphileWorker017 } from '../lib/graphile-worker-0.17.js';
import { oursSystem } from '../lib/ours.js';
import { pgBossSystem } from '../lib/pg-boss.js';
import { pgBoss10 } from '../lib/pg-boss-10.js';
import { rawSystem } from '../lib/raw.js';
import type { ScenarioReport, TargetCheck } from '../lib/report.js';
import { summarize, type Summary } from '../lib/stats.js';
import type { QueueSystem } from '../lib/system.js';
import { int, range, ratio } from '../lib/table.js';

/**
 * Scenario 1, publish in the caller's transaction: each transaction inserts one business row and 1 or 100
 * messages, then commits; 1 or 8 producers (connections) loop for a fixed time. Figure: committed messages per
 * second. Raw ceiling: the same business insert plus a plain INSERT into a bare table.
 */
const CASES = [
  { perTx: 1, producers: 1 },
  { perTx: 1, producers: 8 },
  { perTx: 100, producers: 1 },
  { perTx: 100, producers: 8 },
] as const;

const caseName = (c: (typeof CASES)[number]) =>
  `${c.perTx} msg/tx, ${c.producers} producer${c.producers > 1 ? 's' : ''}`;

async function runOnce(
  ctx: BenchContext,
  system: QueueSystem,
  producers: import('pg').Pool,
  c: (typeof CASES)[number],
): Promise<number> {
  await system.reset();
  await resetBusinessTable(ctx.pool);
  const deadline = preciseNow() + ctx.config.publishSeconds * 1000;
  let n = 0;
  let committed = 0;
  const started = preciseNow();
  await Promise.all(
    Array.from({ length: c.producers }, async () => {
      const client = await producers.connect();
      try {
        while (preciseNow() < deadline) {
          const first = n;
          n += c.perTx;
          await client.query('BEGIN');
          await insertOrder(client, first);
          await system.publish(
            client,
            Array.from({ length: c.perTx }, (_, i) => ({ payload: { n: first + i } })),
          );
          await client.query('COMMIT');
          committed += c.perTx;
        }
      } finally {
        client.release();
      }
    }),
  );
  return committed / ((preciseNow() - started) / 1000);
}

export async function publishScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const raw = rawSystem({ url: ctx.url });
  const ours = oursSystem({ url: ctx.url, label: 'pg-outbox' });
  const node24 = ctx.node24;
  const systems: QueueSystem[] = [
    raw,
    ours,
    pgBossSystem(pgBoss10, { url: ctx.url }),
    graphileWorkerSystem(graphileWorker017, { url: ctx.url }),
    ...(node24 === null
      ? []
      : [pgBoss12System(node24, { url: ctx.url }), graphileWorker018System(node24, { url: ctx.url })]),
  ];
  const producers = createPool(ctx.url, Math.max(...CASES.map((c) => c.producers)));
  const runs = new Map<string, number[]>();
  try {
    for (let rep = 1; rep <= ctx.config.reps; rep++) {
      for (const c of CASES) {
        // Systems interleaved inside each repetition, so a noisy minute hurts all of them alike.
        for (const system of systems) {
          const rate = await runOnce(ctx, system, producers, c);
          const key = `${caseName(c)}|${system.label}`;
          runs.set(key, [...(runs.get(key) ?? []), rate]);
          ctx.log(`publish rep ${rep} ${caseName(c)} ${system.label}: ${int(rate)} msg/s`);
        }
      }
    }
  } finally {
    await producers.end();
    for (const system of systems) await system.close();
    await dropBusinessSchema(ctx.pool);
  }

  const summary = (c: (typeof CASES)[number], s: QueueSystem): Summary =>
    summarize(runs.get(`${caseName(c)}|${s.label}`) ?? []);
  const rows: string[][] = [];
  const ratios: string[] = [];
  const targets: TargetCheck[] = [];
  for (const c of CASES) {
    const mine = summary(c, ours).median;
    for (const s of systems) {
      const sum = summary(c, s);
      rows.push([
        caseName(c),
        s.label,
        int(sum.median),
        range(sum.min, sum.max, int),
        ratio(mine / sum.median),
      ]);
    }
    ratios.push(
      `${caseName(c)}: ` +
        systems
          .filter((s) => s !== ours)
          .map((s) => `ours / ${s.label} = ${ratio(mine / summary(c, s).median)}`)
          .join(', '),
    );
    const vsRaw = mine / summary(c, raw).median;
    targets.push({
      target: `publish in tx ≥ 0.9× raw insert (${caseName(c)})`,
      met: vsRaw >= 0.9,
      detail: `${int(mine)} vs ${int(summary(c, raw).median)} msg/s = ${ratio(vsRaw)}`,
    });
  }
  return {
    name: 'publish',
    title: '1. Publish in the caller’s transaction',
    method: [
      `Each transaction: BEGIN, INSERT one business row (bench_app.orders), publish 1 or 100 messages, COMMIT. ` +
        `1 or 8 producers, each on its own connection, loop for ${ctx.config.publishSeconds} s; figure = committed messages/s. ` +
        `Fresh schemas for every run. No consumer runs.`,
      ...systems.map((s) => `${s.label}: ${s.publishPath}`),
    ],
    tables: [
      {
        caption: 'Committed messages per second (median of repetitions; spread = min–max)',
        table: {
          headers: ['case', 'system', 'msg/s', 'spread', 'ours ÷ this'],
          rows,
          textColumns: 2,
        },
      },
    ],
    ratios,
    targets,
    notes: [
      'The peers marked Node 24 build their statements in a child process and send each one here to run on the ' +
        'producer’s connection, in its transaction: every statement adds an IPC round trip (a fraction of a ' +
        'millisecond), which weighs most at 1 message per transaction. Measured once on this machine by hosting ' +
        'pg-boss 10 and graphile-worker 0.17 the same way: 10–30% fewer msg/s at 1 msg/tx than in this process.',
    ],
  };
}
