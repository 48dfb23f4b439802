import { BasicTracerProvider, BatchSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { Registry } from 'prom-client';
import type { Outbox, OutboxOptions } from '../../src/index.js';
import type { BenchContext } from '../lib/context.js';
import { drainRuns } from '../lib/drain-runs.js';
import { oursSystem } from '../lib/ours.js';
import type { ScenarioReport } from '../lib/report.js';
import { summarize } from '../lib/stats.js';
import type { QueueSystem } from '../lib/system.js';
import { int, range, ratio } from '../lib/table.js';

/** Takes every finished span and drops it: the SDK's whole cost up to the network, without a collector. */
const discarding: SpanExporter = {
  export: (_spans, done) => done({ code: 0 }),
  shutdown: () => Promise.resolve(),
};

interface Variant {
  label: string;
  extra: Partial<OutboxOptions>;
  metrics: boolean;
}

/**
 * What metrics and tracing cost the drain (issue 15): scenario 2's drain with observability off, with metrics,
 * with tracing through @opentelemetry/api but no SDK (what a user who installed the API alone gets), with an SDK
 * recording every span (BatchSpanProcessor, an exporter that drops them), and with both, interleaved in one run.
 */
export async function observabilityCostScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const n = ctx.config.drainN;
  const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(discarding)] });
  const traced = { tracing: { enabled: true, tracerProvider: provider } };
  const variants: Variant[] = [
    { label: 'off', extra: { tracing: false }, metrics: false },
    { label: 'metrics', extra: { tracing: false }, metrics: true },
    { label: 'tracing, API without SDK', extra: { tracing: true }, metrics: false },
    { label: 'tracing with SDK', extra: traced, metrics: false },
    { label: 'metrics + tracing with SDK', extra: traced, metrics: true },
  ];
  const systems: QueueSystem[] = variants.flatMap((v, i) =>
    [false, true].map((relayFirst) =>
      oursSystem({
        url: ctx.url,
        profile: 'throughput',
        schema: `bench_observe_${i}${relayFirst ? '_c' : ''}`,
        relayFirst,
        extra: v.extra,
        setUp: v.metrics
          ? async (outbox: Outbox) => {
              await outbox.metrics({ registry: new Registry(), gauges: false });
            }
          : undefined,
        label: `${v.label}: ${relayFirst ? 'consumer only' : 'relay + consumer'}`,
      }),
    ),
  );
  const runs = await drainRuns(ctx, 'observability-cost', systems, n).finally(() => provider.shutdown());
  const med = (s: QueueSystem | undefined) => summarize(s === undefined ? [] : (runs.get(s) ?? [])).median;
  const [offE2e, offConsumer] = systems;
  return {
    name: 'observability-cost',
    title: '11. What metrics and tracing cost the drain',
    method: [
      `Scenario 2's drain of ${int(n)} waiting messages (no-op handler), each variant interleaved within each ` +
        'repetition. Metrics: outbox.metrics() on a registry nobody scrapes (counters and histograms per ' +
        'delivery; gauges off). Tracing with SDK: a BasicTracerProvider with a BatchSpanProcessor whose exporter ' +
        'drops the spans, passed as tracing.tracerProvider: a `process` span per handler call.',
      ...systems.map((s) => `${s.label}: ${s.settings}`),
    ],
    tables: [
      {
        caption: `Drain of ${int(n)} waiting messages, msg/s (median; spread = min–max)`,
        table: {
          headers: ['variant', 'msg/s', 'spread', '÷ off'],
          rows: systems.map((s, i) => {
            const sum = summarize(runs.get(s) ?? []);
            const off = i % 2 === 0 ? offE2e : offConsumer;
            return [s.label, int(sum.median), range(sum.min, sum.max, int), ratio(sum.median / med(off))];
          }),
        },
      },
    ],
    ratios: [],
    targets: [],
    notes: ['Reproduce: `BENCH_REPS=5 npm run bench:observability-cost`.'],
  };
}
