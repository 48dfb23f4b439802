import { OutboxError } from '../errors.js';
import type { OutboxMessage, OutboxStatus } from '../types.js';
import type { SettledOutcome, TelemetryHub, TelemetrySink } from './hub.js';
import type { CounterCell, CounterTally, HistogramCell, LocalHistogram } from './local-metrics.js';
import { createMetricSet, type MetricSet, type PromClient } from './metric-set.js';

/**
 * The part of a prom-client `Registry` that metrics() relies on (typed here, so that pg-outbox's types do not
 * need prom-client installed).
 */
export interface MetricsRegistry {
  registerMetric(metric: never): void;
  getSingleMetric(name: string): unknown;
  removeSingleMetric(name: string): void;
}

export interface MetricsOptions {
  /**
   * The prom-client registry to register on.
   * @defaultValue prom-client's global `register`
   */
  registry?: MetricsRegistry;
  /**
   * Report the database's figures on scrape (pending, delayed, in flight, dead, oldest pending age, relay backlog
   * and lag: one status() read per scrape, about 6 ms, cached for a second). They describe the whole schema, so
   * every process reports the same values: aggregate them with max(), or turn them off in all but one process.
   * @defaultValue true
   */
  gauges?: boolean;
  /**
   * Buckets (seconds) of pg_outbox_handler_duration_seconds. The first metrics() call on a registry sets them.
   * @defaultValue 1 ms to 60 s
   */
  durationBuckets?: number[];
  /**
   * Buckets (seconds) of pg_outbox_delivery_latency_seconds. The first metrics() call on a registry sets them.
   * @defaultValue 1 ms to 5 min
   */
  latencyBuckets?: number[];
}

export interface OutboxMetrics {
  /** Stops counting and reporting for this Outbox; the metrics leave the registry with the last Outbox on it. */
  close(): void;
}

/** Shared per registry: several Outboxes (schemas) in one process report into the same metrics. */
const sets = new WeakMap<MetricsRegistry, MetricSet>();

async function loadPromClient(): Promise<PromClient> {
  try {
    const mod = (await import('prom-client')) as PromClient & { default?: PromClient };
    return mod.default ?? mod;
  } catch (error) {
    throw new OutboxError(
      'OUTBOX_MISSING_DEPENDENCY',
      'metrics() needs the prom-client package: npm install prom-client',
      { cause: error },
    );
  }
}

const KNOWN = new Set(['registry', 'gauges', 'durationBuckets', 'latencyBuckets']);

function checkOptions(options: MetricsOptions): void {
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) {
      throw new OutboxError('OUTBOX_UNKNOWN_OPTION', `metrics() has no option "${key}"`, { value: key });
    }
  }
  if (options.gauges !== undefined && typeof options.gauges !== 'boolean') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'gauges must be true or false', { value: options.gauges });
  }
  for (const name of ['durationBuckets', 'latencyBuckets'] as const) {
    const buckets = options[name];
    if (buckets === undefined) continue;
    const valid =
      Array.isArray(buckets) &&
      buckets.length > 0 &&
      buckets.every((b, i) => Number.isFinite(b) && b > 0 && (i === 0 || b > (buckets[i - 1] ?? 0)));
    if (!valid) {
      throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be ascending positive numbers (seconds)`, {
        value: buckets,
      });
    }
  }
}

/** When a message became due: its publish time, or its deliverAt when that is later. */
function dueAt(message: OutboxMessage): number {
  const created = message.createdAt.getTime();
  return message.deliverAt === null ? created : Math.max(created, message.deliverAt.getTime());
}

/** Counts this Outbox's work into the registry's metric set, under its schema label (see local-metrics.ts). */
function sinkFor(set: MetricSet, schema: string): TelemetrySink {
  // Hot path: the cells of the registry's shared set (keyed by schema and label values) are looked up once per
  // label set; after that through maps of this Outbox's own, keyed by the message's subscription and topic strings,
  // so no string or closure is made per delivery.
  const prefix = `${schema}\u0000`;
  const outcomes = {
    done: new Map<string, Map<string, CounterCell>>(),
    retry: new Map<string, Map<string, CounterCell>>(),
    dead: new Map<string, Map<string, CounterCell>>(),
  };
  const durations = new Map<string, HistogramCell>();
  const latencies = new Map<string, HistogramCell>();

  function counterCell(tally: CounterTally, key: string, labels: Record<string, string>): CounterCell {
    return tally.find(prefix + key) ?? tally.add(prefix + key, labels);
  }
  function histogramCell(h: LocalHistogram, cache: Map<string, HistogramCell>, subscription: string) {
    const cell = h.find(prefix + subscription) ?? h.add(prefix + subscription, { schema, subscription });
    cache.set(subscription, cell);
    return cell;
  }
  function outcomeCell(outcome: SettledOutcome, subscription: string, topic: string): CounterCell {
    const cell = counterCell(set.outcomes[outcome], `${subscription}\u0000${topic}`, {
      schema,
      subscription,
      topic,
    });
    const byTopic = outcomes[outcome].get(subscription) ?? new Map<string, CounterCell>();
    outcomes[outcome].set(subscription, byTopic.set(topic, cell));
    return cell;
  }

  return {
    published(topic, n) {
      counterCell(set.published, topic, { schema, topic }).value += n;
    },
    relayed(byTopic) {
      for (const [topic, n] of Object.entries(byTopic))
        counterCell(set.relayed, topic, { schema, topic }).value += n;
    },
    ran(message, startedAt, endedAt) {
      const { subscription } = message;
      // Latency of first attempts only: a retry's wait is its backoff.
      if (message.attempt === 1) {
        const cell = latencies.get(subscription) ?? histogramCell(set.latency, latencies, subscription);
        set.latency.observe(cell, Math.max(0, startedAt - dueAt(message)) / 1000);
      }
      const cell = durations.get(subscription) ?? histogramCell(set.duration, durations, subscription);
      set.duration.observe(cell, (endedAt - startedAt) / 1000);
    },
    settled(subscription, topic, outcome) {
      const cell =
        outcomes[outcome].get(subscription)?.get(topic) ?? outcomeCell(outcome, subscription, topic);
      cell.value += 1;
    },
  };
}

/**
 * outbox.metrics(): Prometheus metrics of one Outbox on a prom-client registry (see README, Metrics). Counters and
 * histograms count what this process does; the gauges read the database on scrape.
 */
export async function attachMetrics(
  telemetry: TelemetryHub,
  source: { schema: string; status: () => Promise<OutboxStatus> },
  options: MetricsOptions = {},
): Promise<OutboxMetrics> {
  checkOptions(options);
  const prom = await loadPromClient();
  const registry: MetricsRegistry = options.registry ?? prom.register;
  let set = sets.get(registry);
  if (set === undefined) {
    set = createMetricSet(prom, registry, options);
    sets.set(registry, set);
  }
  const owner = set;
  owner.retain();
  const detachSource = options.gauges === false ? () => undefined : owner.addSource(source);
  const detachSink = telemetry.add(sinkFor(owner, source.schema));
  let closed = false;
  return {
    close() {
      if (closed) return;
      closed = true;
      detachSink();
      detachSource();
      if (owner.release()) sets.delete(registry);
    },
  };
}
