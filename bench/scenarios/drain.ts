import type { BenchContext } from '../lib/context.js';
import { drainRuns } from '../lib/drain-runs.js';
import { graphileWorkerSystem } from '../lib/graphile-worker.js';
import { oursSystem } from '../lib/ours.js';
import { pgBossSystem } from '../lib/pg-boss.js';
import { rawSystem } from '../lib/raw.js';
import { rawOutboxSystem } from '../lib/raw-outbox.js';
import type { ScenarioReport } from '../lib/report.js';
import { summarize } from '../lib/stats.js';
import type { QueueSystem } from '../lib/system.js';
import { int, range, ratio } from '../lib/table.js';

/**
 * Scenario 2, end-to-end drain: N messages published (untimed, 1,000 per transaction through each system's own
 * publish call), then consumed by one subscription with a no-op handler; msg/s from the consumers' start to the
 * last ack. pg-outbox appears three times: relay + consumer (the end-to-end figure: its messages still have to
 * be fanned out when the clock starts, the peers' jobs are claimable at once), and two consumer-only figures
 * where the relay has fanned out everything first — what the old bench/drain.ts measured — in lease and in
 * transactional mode.
 */
export async function drainScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const n = ctx.config.drainN;
  const e2e = oursSystem({
    url: ctx.url,
    profile: 'throughput',
    label: 'pg-outbox lease, relay + consumer',
  });
  const leaseOnly = oursSystem({
    url: ctx.url,
    profile: 'throughput',
    relayFirst: true,
    label: 'pg-outbox lease, consumer only',
  });
  const txOnly = oursSystem({
    url: ctx.url,
    profile: 'throughput',
    relayFirst: true,
    mode: 'transactional',
    label: 'pg-outbox transactional, consumer only',
  });
  const raw = rawSystem({ url: ctx.url });
  const rawOutbox = rawOutboxSystem({ url: ctx.url });
  const boss = pgBossSystem({ url: ctx.url, label: 'pg-boss (8 workers × batch 2000)' });
  // pg-boss v10's rate grows with its batch size until the database is the limit: show a larger one too.
  const bigBoss = pgBossSystem({ url: ctx.url, batchSize: 5000, label: 'pg-boss (8 workers × batch 5000)' });
  const graphile = graphileWorkerSystem({ url: ctx.url });
  const systems: QueueSystem[] = [raw, rawOutbox, e2e, leaseOnly, txOnly, boss, bigBoss, graphile];
  const runs = await drainRuns(ctx, 'drain', systems, n);

  const med = (s: QueueSystem) => summarize(runs.get(s) ?? []).median;
  const bestPeer = [boss, bigBoss, graphile].reduce((a, b) => (med(b) > med(a) ? b : a));
  const ours = med(e2e);
  return {
    name: 'drain',
    title: '2. End-to-end drain',
    method: [
      `${int(n)} messages published before the clock starts (1,000 per transaction, each system's own publish call), ` +
        `then one subscription / queue with a no-op handler drains them. msg/s from the consumers' start() to the ` +
        `moment the database shows every delivery acked (handler count reached, then the system's queue table polled).`,
      'Every system gets a VACUUM ANALYZE of its queue tables after loading: autovacuum is off on this server.',
      ...systems.map((s) => `${s.label}: ${s.settings}`),
    ],
    tables: [
      {
        caption: `Drain of ${int(n)} waiting messages, msg/s (median; spread = min–max)`,
        table: {
          headers: ['system', 'msg/s', 'spread', 'ours (relay + consumer) ÷ this'],
          rows: systems.map((s) => {
            const sum = summarize(runs.get(s) ?? []);
            return [s.label, int(sum.median), range(sum.min, sum.max, int), ratio(ours / sum.median)];
          }),
        },
      },
    ],
    ratios: [e2e, leaseOnly, txOnly].map(
      (o) =>
        `${o.label}: ` +
        [raw, rawOutbox, boss, bigBoss, graphile]
          .map((p) => `/ ${p.label} = ${ratio(med(o) / med(p))}`)
          .join(', '),
    ),
    targets: [
      {
        target: 'e2e drain ≥ 2× the faster of pg-boss and graphile-worker',
        met: ours >= 2 * med(bestPeer),
        detail:
          `relay + consumer ${int(ours)} msg/s vs ${bestPeer.label} ${int(med(bestPeer))} = ${ratio(ours / med(bestPeer))}` +
          ` (consumer only: ${ratio(med(leaseOnly) / med(bestPeer))})`,
      },
      {
        target: 'e2e drain ≥ 0.5× raw',
        met: ours >= 0.5 * med(raw),
        detail:
          `relay + consumer ${int(ours)} vs raw ${int(med(raw))} msg/s = ${ratio(ours / med(raw))}` +
          ` (consumer only: ${ratio(med(leaseOnly) / med(raw))})`,
      },
    ],
    notes: [
      'pg-outbox relay + consumer differs from consumer only in two ways: the relay’s inserts compete with the ' +
        'claims and acks, and the planner statistics of deliveries are those of an empty table (analysed before the ' +
        'relay filled it, which is what a table that usually holds little unfinished work looks like), whereas ' +
        'the consumer-only runs analyse it full. A large gap between the two points at plans chosen from those ' +
        'statistics (EXPLAIN the ack and claim statements mid-drain).',
      'The raw ceiling does less than every queue: no lease or fencing token, no retry state, no audit row; ' +
        'pg-outbox moves each acked delivery to completed_deliveries, pg-boss updates its job row to completed, ' +
        'graphile-worker deletes the job.',
      "raw SQL with pg-outbox's writes is the ceiling of the design rather than of Postgres: per message, the " +
        'relay’s insert into deliveries, the lease update, the delete and the audit row, hand-written on ' +
        'pg-outbox’s own tables, with none of the checks, retries or pipelining. raw ÷ it is what those writes ' +
        'cost; it ÷ pg-outbox is what the library adds on top.',
    ],
  };
}
