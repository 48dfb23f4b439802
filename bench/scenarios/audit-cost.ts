import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { createOutbox } from '../../src/index.js';
import type { BenchContext } from '../lib/context.js';
import { drainRuns } from '../lib/drain-runs.js';
import { oursSystem } from '../lib/ours.js';
import { describe } from '../lib/relay-code.js';
import type { ScenarioReport } from '../lib/report.js';
import { summarize } from '../lib/stats.js';
import type { QueueSystem } from '../lib/system.js';
import { int, range, ratio } from '../lib/table.js';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');

/**
 * What the audit trail costs the drain (issue 14): the drain of scenario 2 (relay + consumer, and consumer only in
 * lease and transactional mode) with this checkout and with BENCH_AUDIT_BASELINE, a checkout from before the audit
 * columns and failure history (e.g. `git worktree add /tmp/old 9dc9025`, node_modules linked), interleaved in one
 * run. Without a baseline only this checkout runs.
 */
export async function auditCostScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const n = ctx.config.drainN;
  const baseline = process.env.BENCH_AUDIT_BASELINE;
  const variants: { label: string; schema: string; create?: typeof createOutbox; origin: string }[] = [
    { label: 'audit', schema: 'bench_audit_new', origin: await describe(ROOT) },
  ];
  if (baseline !== undefined && baseline !== '') {
    const root = path.resolve(baseline);
    const index = (await import(pathToFileURL(path.join(root, 'src', 'index.js')).href)) as {
      createOutbox: typeof createOutbox;
    };
    variants.push({
      label: 'before',
      schema: 'bench_audit_old',
      create: index.createOutbox,
      origin: await describe(root),
    });
  }
  const systems: QueueSystem[] = variants.flatMap((v) => [
    oursSystem({
      url: ctx.url,
      profile: 'throughput',
      schema: v.schema,
      create: v.create,
      label: `${v.label}: lease, relay + consumer`,
    }),
    oursSystem({
      url: ctx.url,
      profile: 'throughput',
      schema: `${v.schema}_lease`,
      create: v.create,
      relayFirst: true,
      label: `${v.label}: lease, consumer only`,
    }),
    oursSystem({
      url: ctx.url,
      profile: 'throughput',
      schema: `${v.schema}_tx`,
      create: v.create,
      relayFirst: true,
      mode: 'transactional',
      label: `${v.label}: transactional, consumer only`,
    }),
  ]);
  const runs = await drainRuns(ctx, 'audit-cost', systems, n);
  const med = (s: QueueSystem) => summarize(runs.get(s) ?? []).median;
  const pairs = variants.length === 2 ? [0, 1, 2].map((i) => [systems[i], systems[i + 3]] as const) : [];
  return {
    name: 'audit-cost',
    title: '8. What the audit trail costs the drain',
    method: [
      `Scenario 2's drain of ${int(n)} waiting messages (no-op handler, every attempt succeeds: the hot path), with ` +
        'this checkout and with the checkout from before the audit trail, interleaved within each repetition.',
      ...variants.map((v) => `${v.label}: ${v.origin}`),
      ...systems.map((s) => `${s.label}: ${s.settings}`),
    ],
    tables: [
      {
        caption: `Drain of ${int(n)} waiting messages, msg/s (median; spread = min–max)`,
        table: {
          headers: ['variant', 'msg/s', 'spread'],
          rows: systems.map((s) => {
            const sum = summarize(runs.get(s) ?? []);
            return [s.label, int(sum.median), range(sum.min, sum.max, int)];
          }),
        },
      },
    ],
    ratios: pairs.map(([after, before]) =>
      after !== undefined && before !== undefined
        ? `${after.label} ÷ ${before.label} = ${ratio(med(after) / med(before))}`
        : '',
    ),
    targets: [],
    notes: [
      'Reproduce: `BENCH_AUDIT_BASELINE=/tmp/old BENCH_REPS=5 npm run bench:audit-cost`. The audit trail adds three ' +
        'columns outside every index to the lease UPDATE and the completion INSERT, and an INSERT into ' +
        'delivery_failures that writes no row unless an attempt failed.',
    ],
  };
}
