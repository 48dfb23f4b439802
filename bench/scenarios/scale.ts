import os from 'node:os';
import type { BenchContext } from '../lib/context.js';
import type { ScenarioReport } from '../lib/report.js';
import {
  CONSUMER_CONNECTIONS,
  poolCap,
  scaleRuns,
  type ScaleRuns,
  type ScaleSystem,
} from '../lib/scale-runs.js';
import { summarize } from '../lib/stats.js';
import { int, range, ratio, type Table } from '../lib/table.js';

const DEFAULT_N = 100_000;
const DEFAULT_PROCESSES = [1, 2, 4];

function envPositive(name: string, raw: string): number {
  const value = Number(raw.trim().replaceAll('_', ''));
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must hold positive integers, got ${raw}`);
  }
  return value;
}

/** BENCH_SCALE_N (messages per drain) and BENCH_SCALE_PROCESSES (a comma-separated list of process counts). */
function readScaleConfig(): { n: number; processCounts: number[] } {
  const rawN = process.env['BENCH_SCALE_N'];
  const rawProcesses = process.env['BENCH_SCALE_PROCESSES'];
  const n = rawN === undefined || rawN === '' ? DEFAULT_N : envPositive('BENCH_SCALE_N', rawN);
  const processCounts =
    rawProcesses === undefined || rawProcesses === ''
      ? DEFAULT_PROCESSES
      : [...new Set(rawProcesses.split(',').map((p) => envPositive('BENCH_SCALE_PROCESSES', p)))];
  return { n, processCounts: processCounts.sort((a, b) => a - b) };
}

/** pg-outbox at its defaults and the peers at their drain settings; the Node 24 ones when a Node 24 was found. */
function scaleSystems(ctx: BenchContext): [ScaleSystem, ...ScaleSystem[]] {
  const url = ctx.url;
  const here = { path: process.execPath };
  const ours: ScaleSystem = {
    label: 'pg-outbox (defaults, relay in every process)',
    node: here,
    spec: { system: 'pg-outbox', options: { url } },
  };
  const node24 = ctx.node24;
  return [
    ours,
    { label: 'pg-boss 10', node: here, spec: { system: 'pg-boss 10', options: { url } } },
    { label: 'graphile-worker 0.17', node: here, spec: { system: 'graphile-worker 0.17', options: { url } } },
    ...(node24 === null
      ? []
      : [
          {
            label: `pg-boss 12 (Node ${node24.major})`,
            node: node24,
            spec: { system: 'pg-boss 12', options: { url, schema: 'bench_pgboss12' } },
          } satisfies ScaleSystem,
          {
            label: `graphile-worker 0.18 (Node ${node24.major})`,
            node: node24,
            spec: { system: 'graphile-worker 0.18', options: { url, schema: 'bench_graphile018' } },
          } satisfies ScaleSystem,
        ]),
  ];
}

const processesLabel = (p: number) => `${p} process${p === 1 ? '' : 'es'}`;

/** Each system's settings at the fewest processes, and what more processes add (the pool cap). */
function settingsLine(system: ScaleSystem, byProcesses: Map<number, string> | undefined): string {
  const entries = [...(byProcesses ?? new Map<number, string>())];
  const [base] = entries;
  if (base === undefined) return `${system.label}: not run`;
  const baseParts = new Set(base[1].split('; '));
  const changes = entries.flatMap(([p, s]) => {
    const added = s.split('; ').filter((part) => !baseParts.has(part));
    return added.length > 0 ? [`at ${processesLabel(p)}: ${added.join('; ')}`] : [];
  });
  return `${system.label}, each process: ${base[1]}${changes.length > 0 ? ` (${changes.join('; ')})` : ''}`;
}

/** "18–31 %": the smallest and largest share of the deliveries one process handled. */
function shareRange(handled: number[] | undefined): string {
  const total = (handled ?? []).reduce((a, b) => a + b, 0);
  if (handled === undefined || total === 0) return 'n/a';
  const percent = (v: number) => `${Math.round((100 * v) / total)}`;
  return `${percent(Math.min(...handled))}–${percent(Math.max(...handled))} %`;
}

interface Figures {
  systems: [ScaleSystem, ...ScaleSystem[]];
  processCounts: number[];
  runs: ScaleRuns;
}

const summary = ({ runs }: Figures, s: ScaleSystem, p: number) => summarize(runs.rates.get(s)?.get(p) ?? []);
const med = (f: Figures, s: ScaleSystem, p: number) => summary(f, s, p).median;
const bestPeer = (f: Figures, p: number) =>
  f.systems.slice(1).reduce((a, b) => (med(f, b, p) > med(f, a, p) ? b : a));

/** Rows = systems, columns = msg/s at each number of processes, then how the largest compares to the smallest. */
function rateTable(f: Figures): Table {
  const fewest = f.processCounts[0] ?? 1;
  const most = f.processCounts.at(-1) ?? 1;
  const compare = most > fewest;
  return {
    headers: [
      'system',
      ...f.processCounts.flatMap((p) => [`${processesLabel(p)}, msg/s`, 'spread']),
      ...(compare ? [`${most} ÷ ${fewest}`, `share of one process at ${most}`] : []),
    ],
    rows: f.systems.map((s) => [
      s.label,
      ...f.processCounts.flatMap((p) => {
        const sum = summary(f, s, p);
        return [int(sum.median), range(sum.min, sum.max, int)];
      }),
      ...(compare
        ? [ratio(med(f, s, most) / med(f, s, fewest)), shareRange(f.runs.shares.get(s)?.get(most))]
        : []),
    ]),
  };
}

function ratioTable(f: Figures): Table {
  const [ours] = f.systems;
  return {
    headers: ['processes', 'fastest peer', 'its msg/s', 'pg-outbox, msg/s', 'pg-outbox ÷ fastest peer'],
    rows: f.processCounts.map((p) => {
      const best = bestPeer(f, p);
      return [
        String(p),
        best.label,
        int(med(f, best, p)),
        int(med(f, ours, p)),
        ratio(med(f, ours, p) / med(f, best, p)),
      ];
    }),
    textColumns: 2,
  };
}

function method(f: Figures, n: number): string[] {
  const caps = f.processCounts.map((p) => `${poolCap(p)} at ${p}`).join(', ');
  return [
    `${int(n)} messages published before the clock starts (1,000 per transaction, each system's own publish ` +
      `call), then ${f.processCounts.join(', ')} consumer processes start on the same subscription / queue with a ` +
      'no-op handler. msg/s from the moment the first process is told to start until the database shows every ' +
      'delivery acked (handler count reached, then the system’s queue table polled).',
    'What runs where: every consumer process is a separate OS process, a child host (bench/lib/child-host.ts) ' +
      'forked by the bench with an IPC channel, that builds the same system object as the drain scenario (its ' +
      'own pg pools, its own library instance) and consumes from one shared schema. pg-outbox, pg-boss 10 and ' +
      `graphile-worker 0.17 run on the bench’s Node (${process.version}); pg-boss 12 and graphile-worker 0.18 on ` +
      'Node 24. The bench process only loads and times: it publishes through the first process’s publish call ' +
      '(that process builds the statements, the bench runs them on its own connection in its own transaction), ' +
      'counts the handler calls that every process reports over IPC in batches, and asks the first process ' +
      'for the unacked count. New processes for every drain, ready (library loaded, instance built) before ' +
      'the clock starts, closed after it.',
    'pg-outbox at its defaults: createOutbox({ pool, schema }) and subscribe(name, { topics }) with no tuning in ' +
      'every process, so every process also runs the relay: one takes the relay lock and fans the messages out ' +
      'while the others stand by; their consumers all claim from the one subscription.',
    'The peers keep their per-process drain settings in every process: pg-boss 8 workers × batch 2000 with a ' +
      'pool of 10, graphile-worker concurrency 24 with a pool of 25. Connections: the server has ' +
      `max_connections = 100, so each process’s pg pools are capped at ${CONSUMER_CONNECTIONS} ÷ processes ` +
      `connections (${caps}); the settings lines below say which pools that cuts. graphile-worker warns when ` +
      'its pool is smaller than its concurrency; its no-op jobs take no connection of their own.',
    'Every system gets a VACUUM ANALYZE of its queue tables after loading: autovacuum is off on this server.',
    ...f.systems.map((s) => settingsLine(s, f.runs.settings.get(s))),
  ];
}

function notes(f: Figures): string[] {
  const most = f.processCounts.at(-1) ?? 1;
  return [
    `This machine has ${os.cpus().length} cores, shared by PostgreSQL, the bench process and every consumer ` +
      'process: more processes than cores measure how each system copes with contention (more claimers on the ' +
      'same rows, more processes on the same CPUs), not what more CPUs would give.',
    'pg-outbox’s relay runs in one process whatever the number: the fan-out into deliveries is part of its clock ' +
      'and does not spread over processes, while the peers’ jobs are claimable at once.',
    'pg-boss 10 has no LISTEN/NOTIFY: each of its workers waits out the rest of a 0.5 s polling interval after a ' +
      'fetch that took less, so one process is bound by workers × batch size per 0.5 s; another process adds 8 ' +
      'more polling workers, until the database or the CPUs are the limit instead.',
    ...(most > (f.processCounts[0] ?? 1)
      ? [
          `"share of one process" is the smallest and the largest part of the deliveries one process handled at ` +
            `${most} processes (last repetition): whether every process took part, or the first to fetch took ` +
            'most of the backlog (pg-boss fetches up to 2,000 per worker at a time, graphile-worker 500 per process).',
        ]
      : []),
    'Every system here pays the same IPC: its handler calls travel to the bench process in batches (as the Node ' +
      '24 peers do in the drain scenario), and the first process also answers the unacked polls. The figures ' +
      'at one process are therefore close to, not the same as, the drain scenario’s in-process figures; pg-boss ' +
      '12 and graphile-worker 0.18 run on a newer Node than the others.',
  ];
}

/**
 * Multi-process scale: N waiting messages drained by 1, 2 and 4 consumer processes on one subscription / queue,
 * pg-outbox at its defaults (relay + consumer in every process) and the peers at their drain settings, every
 * process a real OS process.
 */
export async function scaleScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const { n, processCounts } = readScaleConfig();
  const systems = scaleSystems(ctx);
  const f: Figures = { systems, processCounts, runs: await scaleRuns(ctx, systems, processCounts, n) };
  const [ours, ...peers] = systems;
  return {
    name: 'scale',
    title: 'Multi-process scale',
    method: method(f, n),
    tables: [
      {
        caption: `Drain of ${int(n)} waiting messages by N consumer processes, msg/s (median; spread = min–max)`,
        table: rateTable(f),
      },
      { caption: 'pg-outbox ÷ the fastest peer at each number of processes', table: ratioTable(f) },
    ],
    ratios: processCounts.map(
      (p) =>
        `${processesLabel(p)}: pg-outbox ` +
        peers.map((peer) => `/ ${peer.label} = ${ratio(med(f, ours, p) / med(f, peer, p))}`).join(', '),
    ),
    targets: [],
    notes: notes(f),
  };
}
