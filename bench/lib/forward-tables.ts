import type { BrokerName } from './brokers.js';
import type { RawPublish } from './broker-publish.js';
import type { CpuUse } from './cpu-meter.js';
import type { ForwardRun, ForwardSettings, LoadedRawRun, RawRun } from './forward-runs.js';
import type { TargetCheck } from './report.js';
import { median, summarize } from './stats.js';
import { int, ms, range, ratio, type Table } from './table.js';

/** The forward scenario's tables and targets, from its runs. */

/** forward()'s default concurrency: 200 unconfirmed publishes in flight. */
export const DEFAULT_IN_FLIGHT = 200;
export const DEFAULT_BATCH_SIZE = 1000;
export const NO_BROKER: BrokerName = 'no broker';
/** The forwarder at its defaults is meant to reach the broker's rate; read as at least this share of it. */
const TARGET_SHARE = 0.8;

/** The forwarder's settings for a window: its defaults at 200, else room in the batch for every slot. */
export function forwardSettings(inFlight: number): ForwardSettings {
  if (inFlight === DEFAULT_IN_FLIGHT) return null;
  return { concurrency: inFlight, batchSize: Math.max(DEFAULT_BATCH_SIZE, 2 * inFlight) };
}

/** Each setting's runs, over the repetitions. */
export interface Runs {
  forward: (broker: BrokerName, inFlight: number) => ForwardRun[];
  raw: (broker: BrokerName, inFlight: number, style?: RawPublish['style']) => RawRun[];
  /** The raw publish at the default in flight with pg-outbox's side running beside it. */
  loaded: (broker: BrokerName) => LoadedRawRun[];
}

export const medianOf = <R>(runs: R[], pick: (r: R) => number) => median(runs.map(pick));
const spreadOf = <R>(runs: R[], pick: (r: R) => number) => {
  const s = summarize(runs.map(pick));
  return range(s.min, s.max, int);
};
const arrived = (runs: { n: number; received: number }[]) =>
  runs.every((r) => r.received === r.n)
    ? 'all'
    : runs.map((r) => `${int(r.received)}/${int(r.n)}`).join(', ');
const cores = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : 'n/a');
const windowLabel = (w: number) => (w === DEFAULT_IN_FLIGHT ? `${w} (forward's default)` : String(w));

export function rateTable(broker: BrokerName, windows: number[], runs: Runs): Table {
  const rows = windows.map((w) => {
    const f = runs.forward(broker, w);
    const r = runs.raw(broker, w);
    return [
      windowLabel(w),
      int(f[0]?.n ?? NaN),
      int(medianOf(r, (x) => x.rate)),
      spreadOf(r, (x) => x.rate),
      int(medianOf(f, (x) => x.spanRate)),
      spreadOf(f, (x) => x.spanRate),
      ratio(medianOf(f, (x) => x.spanRate) / medianOf(r, (x) => x.rate)),
      int(medianOf(f, (x) => x.wallRate)),
      `${arrived(f)} / ${arrived(r)}`,
    ];
  });
  const loaded = runs.loaded(broker);
  if (loaded.length > 0) {
    const f = runs.forward(broker, DEFAULT_IN_FLIGHT);
    const early = loaded.filter((r) => !r.overlapped).length;
    rows.push([
      `${DEFAULT_IN_FLIGHT}, raw beside pg-outbox's side`,
      int(loaded[0]?.n ?? NaN),
      int(medianOf(loaded, (x) => x.rate)),
      spreadOf(loaded, (x) => x.rate),
      int(medianOf(f, (x) => x.spanRate)),
      spreadOf(f, (x) => x.spanRate),
      ratio(medianOf(f, (x) => x.spanRate) / medianOf(loaded, (x) => x.rate)),
      '',
      `– / ${arrived(loaded)}${early > 0 ? ` (the load ended first in ${early})` : ''}`,
    ]);
  }
  const all = runs.raw(broker, 0, 'all');
  if (all.length > 0) {
    const cells = [int(medianOf(all, (x) => x.rate)), spreadOf(all, (x) => x.rate), '', '', '', ''];
    rows.push(['all, then waitForConfirms', int(all[0]?.n ?? NaN), ...cells, `– / ${arrived(all)}`]);
  }
  return {
    headers: [
      'in flight',
      'messages',
      'raw publish, msg/s',
      'spread',
      'forward, msg/s',
      'spread',
      'forward ÷ raw',
      'forward from start(), msg/s',
      'arrived (forward / raw)',
    ],
    rows,
  };
}

/** Why a rate is what it is: how full the forwarder kept its pipeline, and how long each confirm took. */
export function pipelineTable(brokers: BrokerName[], windows: number[], runs: Runs): Table {
  const measured = [...brokers, NO_BROKER].flatMap((b) =>
    windows.filter((w) => runs.forward(b, w).length > 0).map((w) => [b, w] as const),
  );
  const fixed = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : 'n/a');
  const rows = measured.map(([b, w]) => {
    const f = runs.forward(b, w);
    const r = runs.raw(b, w);
    const cpu = (pick: (c: CpuUse) => number) =>
      `${cores(medianOf(f, (x) => pick(x.cpu)))} / ${r.length === 0 ? '–' : cores(medianOf(r, (x) => pick(x.cpu)))}`;
    return [
      b,
      windowLabel(w),
      String(forwardSettings(w)?.batchSize ?? DEFAULT_BATCH_SIZE),
      int(medianOf(f, (x) => x.spanRate)),
      fixed(medianOf(f, (x) => x.pipeline.mean)),
      String(Math.max(0, ...f.map((x) => x.pipeline.most))),
      ms(medianOf(f, (x) => x.pipeline.latencyMs)),
      r.length === 0 ? '–' : ms(medianOf(r, (x) => x.latencyMs)),
      int(medianOf(f, (x) => x.done / x.claims)),
      int(medianOf(f, (x) => x.done / x.acks)),
      cpu((c) => c.machineCores),
      cpu((c) => c.processCores),
      String(Math.max(0, ...f.map((x) => x.failures))),
    ];
  });
  return {
    headers: [
      'target',
      'in flight',
      'batchSize',
      'forward, msg/s',
      'mean sends in flight',
      'most',
      'confirm ms, forward',
      'confirm ms, raw',
      'rows per claim',
      'rows per ack',
      'machine CPU, cores (forward / raw)',
      'bench process CPU, cores (forward / raw)',
      'failed attempts (max)',
    ],
    rows,
    textColumns: 2,
  };
}

export function targets(brokers: BrokerName[], windows: number[], runs: Runs): TargetCheck[] {
  const share = (b: BrokerName) =>
    medianOf(runs.forward(b, DEFAULT_IN_FLIGHT), (x) => x.spanRate) /
    medianOf(runs.raw(b, DEFAULT_IN_FLIGHT), (x) => x.rate);
  const forwards = brokers.flatMap((b) => windows.flatMap((w) => runs.forward(b, w)));
  const exact = forwards.filter((r) => r.received === r.n && r.done === r.n && r.dead === 0);
  return [
    {
      target:
        `the forwarder at its defaults reaches the broker's rate (read as ≥ ${ratio(TARGET_SHARE)} the same ` +
        `client's publish with the same ${DEFAULT_IN_FLIGHT} in flight)`,
      met: brokers.every((b) => share(b) >= TARGET_SHARE),
      detail: brokers.map((b) => `${b}: ${ratio(share(b))}`).join('; '),
    },
    {
      target: 'every forwarded message arrives: the broker holds n messages, n deliveries done, none dead',
      met: exact.length === forwards.length,
      detail: `${exact.length} of ${forwards.length} forward runs`,
    },
  ];
}
