import type { BenchContext } from '../lib/context.js';
import { dropSchemas } from '../lib/db.js';
import {
  FLOW_SCHEMA,
  keyedMessages,
  keyRun,
  POOL_MAX,
  PROCESSES,
  rateRun,
  type KeyRun,
  type KeyWorkload,
  type RateRun,
} from '../lib/flow-runs.js';
import type { ScenarioReport, TargetCheck } from '../lib/report.js';
import { median, percentile, sorted, summarize } from '../lib/stats.js';
import { int, range, ratio, type Table } from '../lib/table.js';

/** 5 ms handlers, 20 per process: 60 in all, more than the 20 keys × 2 a limit of 2 lets run. */
const KEY_SLEEP_MS = 5;
const KEY_HANDLERS = 20;
const KEYS = 20;
/** A key limit that never binds (every handler of every process may run the same key): the claim path's price. */
const UNBOUND = PROCESSES * KEY_HANDLERS;
const KEY_LIMITS = [null, UNBOUND, 4, 2, 1];

function envList(name: string, fallback: number[]): number[] {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const values = raw.split(',').map((v) => Number(v.trim().replaceAll('_', '')));
  if (values.some((v) => !Number.isFinite(v) || v <= 0)) {
    throw new Error(`${name} must be a comma-separated list of positive numbers, got ${raw}`);
  }
  return values;
}

/** Runs every item once per repetition, each repetition starting one item further on. */
async function interleaved<T, R>(
  ctx: BenchContext,
  items: T[],
  label: (item: T) => string,
  run: (item: T) => Promise<R>,
): Promise<(item: T) => R[]> {
  const results = new Map<T, R[]>(items.map((item) => [item, []]));
  for (let rep = 1; rep <= ctx.config.reps; rep++) {
    const shift = (rep - 1) % items.length;
    for (const item of [...items.slice(shift), ...items.slice(0, shift)]) {
      results.get(item)?.push(await run(item));
      ctx.log(`flow-control rep ${rep} ${label(item)} done`);
    }
  }
  return (item) => results.get(item) ?? [];
}

const medianOf = <R>(runs: R[], pick: (r: R) => number) => median(runs.map(pick));
const consumersOf = (runs: { consumers: number }[]) => [...new Set(runs.map((r) => r.consumers))].join(', ');

function rateTable(limits: (number | null)[], runsOf: (limit: number | null) => RateRun[]): Table {
  const rows = limits.map((limit) => {
    const runs = runsOf(limit);
    const achieved = summarize(runs.map((r) => r.achieved));
    const second = (p: number) => int(medianOf(runs, (r) => percentile(sorted(r.perSecond), p)));
    return [
      limit === null ? 'none (ceiling)' : int(limit),
      int(runs[0]?.n ?? NaN),
      int(achieved.median),
      range(achieved.min, achieved.max, int),
      limit === null ? '' : ratio(achieved.median / limit),
      second(10),
      second(50),
      second(90),
      int(medianOf(runs, (r) => r.drained)),
      consumersOf(runs),
    ];
  });
  return {
    headers: [
      'limit, msg/s',
      'messages',
      'handed out, msg/s',
      'spread',
      '÷ limit',
      '1 s p10',
      '1 s p50',
      '1 s p90',
      'drained, msg/s',
      'consumers',
    ],
    rows,
  };
}

function keyTable(runsOf: (perKey: number | null) => KeyRun[], unlimited: number): Table {
  const rows = KEY_LIMITS.map((perKey) => {
    const runs = runsOf(perKey);
    const drained = summarize(runs.map((r) => r.drained));
    return [
      perKey === null ? 'none' : perKey === UNBOUND ? `${perKey} (never binds)` : String(perKey),
      int(drained.median),
      range(drained.min, drained.max, int),
      perKey === null ? '' : ratio(drained.median / unlimited),
      String(Math.max(...runs.map((r) => r.most))),
      perKey === null ? '' : `${int(medianOf(runs, (r) => r.keysAtLimit))} of ${KEYS}`,
      runs.map((r) => int(r.handled)).join(', '),
      consumersOf(runs),
    ];
  });
  return {
    headers: [
      'keyConcurrency',
      'drained, msg/s',
      'spread',
      '÷ no limit',
      'most in flight of a key',
      'keys at the limit',
      'handled',
      'consumers',
    ],
    rows,
  };
}

function targets(
  rates: number[],
  rateRuns: (limit: number | null) => RateRun[],
  keyRuns: (perKey: number | null) => KeyRun[],
): TargetCheck[] {
  const limits = KEY_LIMITS.filter((k): k is number => k !== null);
  const most = (k: number) => Math.max(...keyRuns(k).map((r) => r.most));
  return [
    {
      target: `the achieved rate stays within 10% of the limit with ${PROCESSES} competing processes`,
      met: rates.every((rate) => rateRuns(rate).every((r) => Math.abs(r.achieved / rate - 1) <= 0.1)),
      detail: rates
        .map((rate) => {
          const r = summarize(rateRuns(rate).map((x) => x.achieved / rate));
          return `${int(rate)}/s: ${ratio(r.median)} (${range(r.min, r.max, ratio)})`;
        })
        .join('; '),
    },
    {
      target: `every rate-limited run's hand-outs come from all ${PROCESSES} processes`,
      met: rates.every((rate) => rateRuns(rate).every((r) => r.consumers === PROCESSES)),
      detail: rates.map((rate) => `${int(rate)}/s: ${consumersOf(rateRuns(rate))}`).join('; '),
    },
    {
      target: 'at most keyConcurrency handler calls of one key at once, across the processes',
      met: limits.every((k) => most(k) <= k),
      detail: limits.map((k) => `limit ${k}: most ${most(k)}`).join('; '),
    },
  ];
}

/**
 * Flow control across processes (issue 16): a subscription's rate limit and its per-key concurrency limit, each
 * held by three competing consumer processes at once, measured from the audit trail (the database's clock) and
 * the handlers' own intervals, next to the same work drained with no limit.
 */
export async function flowControlScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const rates = envList('BENCH_FLOW_RATES', [200, 2000, 15000]);
  const seconds = envList('BENCH_FLOW_SECONDS', [5])[0] ?? 5;
  const workload: KeyWorkload = {
    keys: KEYS,
    perKey: envList('BENCH_FLOW_KEY_MESSAGES', [150])[0] ?? 150,
    sleepMs: KEY_SLEEP_MS,
    handlers: KEY_HANDLERS,
  };
  const backlog = (rate: number) => Math.max(1000, Math.round(seconds * rate));
  const ceilingN = Math.max(...rates.map(backlog));

  const limits = [null, ...rates];
  const rateRuns = await interleaved(
    ctx,
    limits,
    (l) => `rate limit ${l ?? 'none'}`,
    (l) => rateRun(ctx, l, l === null ? ceilingN : backlog(l)),
  );
  const keyRuns = await interleaved(
    ctx,
    KEY_LIMITS,
    (k) => `keyConcurrency ${k ?? 'none'}`,
    (k) => keyRun(ctx, k, workload),
  );
  await dropSchemas(ctx.pool, FLOW_SCHEMA);

  const ceiling = medianOf(rateRuns(null), (r) => r.achieved);
  const unlimitedKeys = medianOf(keyRuns(null), (r) => r.drained);
  const highest = Math.max(...rates);
  const errors = [...limits.flatMap(rateRuns), ...KEY_LIMITS.flatMap(keyRuns)].flatMap((r) => r.errors);
  const notes = [
    'Reproduce: `npm run bench:flow-control`; sizes: `BENCH_FLOW_RATES` (200,2000,15000), `BENCH_FLOW_SECONDS` ' +
      '(5: the backlog lasts this long at the limit, at least 1,000 messages), `BENCH_FLOW_KEY_MESSAGES` (150 per ' +
      'key), `BENCH_REPS` (3).',
  ];
  if (ceiling < highest * 1.1) {
    notes.push(
      `The unlimited hand-out rate (${int(ceiling)} msg/s) is not clearly above the highest limit ` +
        `(${int(highest)} msg/s): that row measures the machine, not the limit.`,
    );
  }
  if (errors.length > 0) {
    notes.push(`The consumer processes' Outboxes emitted ${errors.length} error(s); the first: ${errors[0]}`);
  }
  return {
    name: 'flow-control',
    title: '12. Flow control across processes: rate limit and per-key concurrency',
    repetitions: `${ctx.config.reps} repetitions per setting`,
    method: [
      `Each run: a fresh schema ${FLOW_SCHEMA}, one subscription declared with the limit (declareSubscription), ` +
        'the backlog published and fanned out by a relay in the parent before any consumer runs, then ' +
        `${PROCESSES} consumer processes (node --import tsx bench/lib/flow-consumer.ts, each its own pg Pool of ` +
        `${POOL_MAX} and Outbox, relay off), started together once all are built and stopped (SIGTERM → ` +
        'outbox.stop()) once every delivery is acked. Settings interleaved within each repetition.',
      'Rate limit: no-op handlers, consumer defaults (batchSize 100, concurrency 10), the default burst ' +
        `(max(1, perSecond / 10)). Backlog: the limit × ${seconds} s, at least 1,000; the ceiling drains ` +
        `${int(ceilingN)} with no limit. Handed out = (n − burst) / (last − first hand-out), from ` +
        'audit_deliveries.first_attempt_at (the claim statement’s now()); n / span with no limit. 1 s: hand-outs ' +
        'in each whole second after the first hand-out, the first and the last second left out. Drained: n / ' +
        '(last completion − first hand-out). Consumers: distinct host:pid:instance that handed out.',
      `Per-key concurrency: ${KEYS} keys × ${workload.perKey} messages, interleaved, plus a keyless one after ` +
        `every tenth (${int(keyedMessages(workload).length)} in all); handlers sleep ${KEY_SLEEP_MS} ms, ` +
        `${KEY_HANDLERS} per process. Each process records every handler call's key, start and end (performance ` +
        'clock, ms since the epoch); the parent merges the three and counts the most calls of one key that ' +
        `overlap. keyConcurrency ${UNBOUND} equals all handler slots, so it never binds: its ratio is the price ` +
        'of the key-limited claim path alone.',
    ],
    tables: [
      {
        caption:
          `Rate limit, ${PROCESSES} competing processes (median; spread = min–max; ` +
          '1 s p10/p50/p90 = median over repetitions)',
        table: rateTable(limits, rateRuns),
      },
      {
        caption:
          `Per-key concurrency, ${PROCESSES} processes × ${KEY_HANDLERS} handlers of ${KEY_SLEEP_MS} ms ` +
          '(median; spread = min–max; most in flight = max over repetitions)',
        table: keyTable(keyRuns, unlimitedKeys),
      },
    ],
    ratios: [
      `highest limit ÷ unlimited hand-out rate = ${int(highest)} ÷ ${int(ceiling)} = ${ratio(highest / ceiling)}`,
      ...KEY_LIMITS.filter((k) => k !== null).map(
        (k) =>
          `keyConcurrency ${k} ÷ no limit = ${ratio(medianOf(keyRuns(k), (r) => r.drained) / unlimitedKeys)}`,
      ),
    ],
    targets: targets(rates, rateRuns, keyRuns),
    notes,
  };
}
