import { pgBoss12System } from '../lib/child-system.js';
import type { BenchContext } from '../lib/context.js';
import { preciseNow } from '../lib/db.js';
import { plainMessages, publishAll } from '../lib/load.js';
import { oursSystem } from '../lib/ours.js';
import { pgBossSystem } from '../lib/pg-boss.js';
import { pgBoss10 } from '../lib/pg-boss-10.js';
import type { ScenarioReport } from '../lib/report.js';
import { summarize } from '../lib/stats.js';
import type { QueueSystem } from '../lib/system.js';
import { int, range, ratio } from '../lib/table.js';
import { timedDrain } from '../lib/timed-drain.js';

/**
 * Scenario 3, fan-out: one topic followed by 10 subscriptions. Phase 1 publishes M messages, 100 per
 * transaction; phase 2 starts every consumer (and, for pg-outbox, the relay that does the fan-out) and runs until
 * all M x 10 deliveries are acked. pg-boss fans out at publish time (publish() sends one job per subscribed queue),
 * pg-outbox in the relay: so both phases are reported, and the end-to-end rate over their sum.
 * graphile-worker has no publish/subscribe and is not part of this scenario. pg-boss 12 runs in a Node 24 child
 * process when a Node 24 was found.
 */
export async function fanoutScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const m = ctx.config.fanoutN;
  const subs = ctx.config.fanoutSubscriptions;
  const deliveries = m * subs;
  const ours = oursSystem({ url: ctx.url, profile: 'throughput', subscriptions: subs, label: 'pg-outbox' });
  const bosses = [
    pgBossSystem(pgBoss10, { url: ctx.url, queues: subs, workers: 1 }),
    ...(ctx.node24 === null ? [] : [pgBoss12System(ctx.node24, { url: ctx.url, queues: subs, workers: 1 })]),
  ];
  const systems: QueueSystem[] = [ours, ...bosses];
  const runs = new Map<QueueSystem, { publish: number[]; drain: number[]; total: number[] }>(
    systems.map((s) => [s, { publish: [], drain: [], total: [] }]),
  );
  const messages = plainMessages(m);
  try {
    for (let rep = 1; rep <= ctx.config.reps; rep++) {
      for (const system of systems) {
        await system.reset();
        const started = preciseNow();
        await publishAll(ctx.pool, system, messages, 100);
        const publishMs = preciseNow() - started;
        const drainMs = await timedDrain(system, deliveries);
        const r = runs.get(system);
        r?.publish.push(m / (publishMs / 1000));
        r?.drain.push(deliveries / (drainMs / 1000));
        r?.total.push(deliveries / ((publishMs + drainMs) / 1000));
        ctx.log(
          `fanout rep ${rep} ${system.label}: publish ${int(publishMs)} ms, fan-out + drain ${int(drainMs)} ms`,
        );
      }
    }
  } finally {
    for (const system of systems) await system.close();
  }

  const get = (s: QueueSystem, k: 'publish' | 'drain' | 'total') => summarize(runs.get(s)?.[k] ?? []);
  const rows = systems.map((s) => {
    const [p, d, t] = [get(s, 'publish'), get(s, 'drain'), get(s, 'total')];
    return [
      s.label,
      int(p.median),
      int(d.median),
      range(d.min, d.max, int),
      int(t.median),
      range(t.min, t.max, int),
    ];
  });
  return {
    name: 'fanout',
    title: `3. Fan-out to ${subs} subscriptions`,
    method: [
      `${int(m)} messages on one topic that ${subs} subscriptions follow = ${int(deliveries)} deliveries, no-op ` +
        'handlers. Phase 1: publish, 100 messages per transaction (pg-outbox publishMany; pg-boss publish() per ' +
        'message with { db }, which sends one job to each subscribed queue). Phase 2: consumers started (pg-outbox: ' +
        'relay + consumers in one Outbox) until every delivery is acked in the database.',
      ...systems.map((s) => `${s.label}: publish with ${s.publishPath}; consumers: ${s.settings}`),
    ],
    tables: [
      {
        caption: 'Fan-out (medians; spread = min–max)',
        table: {
          headers: [
            'system',
            'publish msg/s',
            'fan-out + drain deliveries/s',
            'spread',
            'end-to-end deliveries/s',
            'spread',
          ],
          rows,
        },
      },
    ],
    ratios: bosses.flatMap((boss) => [
      `end-to-end deliveries/s: ours / ${boss.label} = ${ratio(get(ours, 'total').median / get(boss, 'total').median)}`,
      `fan-out + drain phase: ours / ${boss.label} = ${ratio(get(ours, 'drain').median / get(boss, 'drain').median)}`,
      `publish phase (messages/s): ours / ${boss.label} = ${ratio(get(ours, 'publish').median / get(boss, 'publish').median)}`,
    ]),
    targets: [],
    notes: [
      'pg-outbox’s deliveries table starts each repetition empty and analysed, so the claims and acks of phase 2 ' +
        'are planned with the statistics of an empty table, as in the drain scenario’s relay + consumer row.',
    ],
  };
}
