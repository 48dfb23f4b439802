import type { Gauge, Registry } from 'prom-client';
import type { OutboxStatus } from '../types.js';
import type { SettledOutcome } from './hub.js';
import { CounterTally, LocalHistogram } from './local-metrics.js';

export type PromClient = typeof import('prom-client');

/** Seconds; from a quick handler to a slow one. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Seconds; from a relay poll to minutes behind. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
/** One status() read serves every gauge of a scrape, and scrapes closer together than this. */
const STATUS_CACHE_MS = 1_000;

/** The metrics of one registry, shared by the Outboxes (schemas) that report into it. */
export interface MetricSet {
  /** Labels schema, topic. */
  published: CounterTally;
  relayed: CounterTally;
  /** Labels schema, subscription, topic. */
  outcomes: Record<SettledOutcome, CounterTally>;
  /** Labels schema, subscription. */
  duration: LocalHistogram;
  latency: LocalHistogram;
  /** One more Outbox reports into the set. */
  retain(): void;
  /** Adds an Outbox whose status the gauges report; returns its removal. */
  addSource(source: StatusSource): () => void;
  /** One Outbox let go of the set; true (and the metrics are off the registry) when it was the last one. */
  release(): boolean;
}

export interface StatusSource {
  schema: string;
  status: () => Promise<OutboxStatus>;
}

interface CachedSource extends StatusSource {
  read?: { at: number; value: Promise<OutboxStatus | null> };
}

type SubscriptionFigure = 'pending' | 'delayed' | 'inFlight' | 'dead' | 'oldestPendingMs';

/** Gauges over each subscription's figures: name, help, the status field, and its scale to the unit. */
const SUBSCRIPTION_GAUGES: [string, string, SubscriptionFigure, number][] = [
  ['pg_outbox_deliveries_pending', 'Deliveries due now and waiting for a consumer', 'pending', 1],
  [
    'pg_outbox_deliveries_delayed',
    'Deliveries waiting for a due time (delayed, retry backoff)',
    'delayed',
    1,
  ],
  ['pg_outbox_deliveries_in_flight', 'Deliveries claimed by a consumer, lease running', 'inFlight', 1],
  ['pg_outbox_deliveries_dead', 'Dead letters kept', 'dead', 1],
  ['pg_outbox_oldest_pending_age_seconds', 'Age of the oldest due delivery', 'oldestPendingMs', 1 / 1000],
];

export function createMetricSet(
  prom: PromClient,
  registry: unknown,
  options: { durationBuckets?: number[]; latencyBuckets?: number[] },
): MetricSet {
  const registers = [registry as Registry];
  // Every metric's name, to take them off the registry with the last Outbox.
  const names: string[] = [];
  const counter = <T extends string>(name: string, help: string, labelNames: T[]) => {
    names.push(name);
    return new prom.Counter({ name, help, labelNames, registers });
  };
  /** A prom-client counter fed from a tally when the registry is read (see local-metrics.ts). */
  const tallied = (name: string, help: string, labelNames: string[]) => {
    const tally = new CounterTally();
    names.push(name);
    new prom.Counter({
      name,
      help,
      labelNames,
      registers,
      collect() {
        tally.flush((labels, n) => this.inc(labels, n));
      },
    });
    return tally;
  };
  const histogram = (name: string, help: string, buckets: number[]) => {
    names.push(name);
    const h = new LocalHistogram(name, help, buckets);
    (registry as Registry).registerMetric(h as never);
    return h;
  };

  const byTopic = ['schema', 'topic'];
  const bySubscription = ['schema', 'subscription', 'topic'];
  const sources = new Set<CachedSource>();
  let owners = 0;
  const readErrors = counter('pg_outbox_status_read_errors_total', 'Scrapes whose status read failed', [
    'schema',
  ]);

  /** Each source's status for this scrape; a failed read counts and reports no gauge values. */
  async function statuses(): Promise<{ schema: string; status: OutboxStatus }[]> {
    const now = Date.now();
    const read = [...sources].map(async (source) => {
      if (source.read === undefined || now - source.read.at > STATUS_CACHE_MS) {
        const value = source.status().catch(() => {
          readErrors.inc({ schema: source.schema });
          return null;
        });
        source.read = { at: now, value };
      }
      const status = await source.read.value;
      return status === null ? [] : [{ schema: source.schema, status }];
    });
    return (await Promise.all(read)).flat();
  }

  function gauge(
    name: string,
    help: string,
    labelNames: string[],
    fill: (g: Gauge, s: typeof statuses) => Promise<void>,
  ) {
    names.push(name);
    return new prom.Gauge({
      name,
      help,
      labelNames,
      registers,
      async collect() {
        this.reset();
        await fill(this, statuses);
      },
    });
  }

  for (const [name, help, field, scale] of SUBSCRIPTION_GAUGES) {
    gauge(name, help, ['schema', 'subscription'], async (g, read) => {
      for (const { schema, status } of await read()) {
        for (const sub of status.subscriptions) g.set({ schema, subscription: sub.name }, sub[field] * scale);
      }
    });
  }
  gauge(
    'pg_outbox_relay_backlog_messages',
    'Committed messages the relay has not fanned out yet',
    ['schema'],
    async (g, read) => {
      for (const { schema, status } of await read()) g.set({ schema }, status.relay.backlog);
    },
  );
  gauge(
    'pg_outbox_relay_lag_seconds',
    'Age of the oldest message the relay has not fanned out',
    ['schema'],
    async (g, read) => {
      for (const { schema, status } of await read()) g.set({ schema }, status.relay.lagMs / 1000);
    },
  );

  const set: MetricSet = {
    published: tallied(
      'pg_outbox_messages_published_total',
      'Messages written by publish (before the commit)',
      byTopic,
    ),
    relayed: tallied(
      'pg_outbox_messages_relayed_total',
      'Messages fanned out to their subscriptions',
      byTopic,
    ),
    outcomes: {
      done: tallied('pg_outbox_deliveries_handled_total', 'Deliveries handled and acked', bySubscription),
      retry: tallied(
        'pg_outbox_deliveries_retried_total',
        'Failed attempts scheduled for a retry',
        bySubscription,
      ),
      dead: tallied(
        'pg_outbox_deliveries_dead_lettered_total',
        'Deliveries moved to the dead letters',
        bySubscription,
      ),
    },
    duration: histogram(
      'pg_outbox_handler_duration_seconds',
      'Time in the handler, per delivery',
      options.durationBuckets ?? DURATION_BUCKETS,
    ),
    latency: histogram(
      'pg_outbox_delivery_latency_seconds',
      "From a message's publish (or its deliverAt) to its handler's start, first attempts",
      options.latencyBuckets ?? LATENCY_BUCKETS,
    ),
    retain() {
      owners += 1;
    },
    addSource(source) {
      const cached: CachedSource = { ...source };
      sources.add(cached);
      return () => sources.delete(cached);
    },
    release() {
      owners -= 1;
      if (owners > 0) return false;
      for (const name of names) (registry as Registry).removeSingleMetric(name);
      return true;
    },
  };
  return set;
}
