import { natsSink, noBrokerSink, rabbitSink, type BrokerName, type BrokerSink } from '../lib/brokers.js';
import type { RawPublish } from '../lib/broker-publish.js';
import type { BenchContext } from '../lib/context.js';
import { dropSchemas } from '../lib/db.js';
import {
  FORWARD_POOL_MAX,
  FORWARD_SCHEMA,
  forwardRun,
  loadedRawRun,
  rawRun,
  type ForwardRun,
  type LoadedRawRun,
  type RawRun,
} from '../lib/forward-runs.js';
import {
  DEFAULT_IN_FLIGHT,
  forwardSettings,
  medianOf,
  NO_BROKER,
  pipelineTable,
  rateTable,
  targets,
  type Runs,
} from '../lib/forward-tables.js';
import type { ScenarioReport } from '../lib/report.js';
import { int, ratio } from '../lib/table.js';

function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw.replaceAll('_', ''));
  if (!Number.isInteger(value) || value <= 0)
    throw new Error(`${name} must be a positive integer, got ${raw}`);
  return value;
}

function envWindows(): number[] {
  const raw = process.env['BENCH_FORWARD_IN_FLIGHT'];
  if (raw === undefined || raw === '') return [1, 50, DEFAULT_IN_FLIGHT, 1000];
  const values = raw.split(',').map((v) => Number(v.trim()));
  if (values.some((v) => !Number.isInteger(v) || v <= 0)) {
    throw new Error(
      `BENCH_FORWARD_IN_FLIGHT must be a comma-separated list of positive integers, got ${raw}`,
    );
  }
  return [...new Set([...values, DEFAULT_IN_FLIGHT])].sort((a, b) => a - b);
}

/** One measured setting: the forwarder, or the broker's own publish, with this many publishes in flight. */
interface Setting {
  broker: BrokerName;
  /** raw-loaded: the raw publish while pg-outbox's side of forwarding runs in this process (no broker). */
  kind: 'forward' | 'raw' | 'raw-loaded';
  /** 0 with style 'all': every message published before the first confirm is awaited. */
  inFlight: number;
  style: RawPublish['style'];
  n: number;
}

const label = (s: Setting) =>
  `${s.broker} ${s.kind} ${s.style === 'all' ? 'all, then waitForConfirms' : `${s.inFlight} in flight`}`;

/** The no-broker load of a loaded raw publish: this many times its messages, so that it outlasts the publish. */
const LOAD_FACTOR = 2.5;

const keyOf = (broker: BrokerName, kind: Setting['kind'], style: RawPublish['style'], inFlight: number) =>
  `${broker} ${kind} ${style} ${inFlight}`;

/** Every setting once per repetition, each repetition starting one setting further on. */
async function measure(ctx: BenchContext, settings: Setting[], sinks: Map<BrokerName, BrokerSink>) {
  const forward = new Map<string, ForwardRun[]>();
  const raw = new Map<string, RawRun[]>();
  const loaded = new Map<string, LoadedRawRun[]>();
  const add = <R>(runs: Map<string, R[]>, key: string, run: R) =>
    runs.set(key, [...(runs.get(key) ?? []), run]);
  for (let rep = 1; rep <= ctx.config.reps; rep++) {
    const shift = (rep - 1) % settings.length;
    for (const s of [...settings.slice(shift), ...settings.slice(0, shift)]) {
      const sink = sinks.get(s.broker);
      if (sink === undefined) throw new Error(`no sink for ${s.broker}`);
      const key = keyOf(s.broker, s.kind, s.style, s.inFlight);
      let rate: number;
      let received: number;
      const how = { broker: s.broker, style: s.style, inFlight: s.inFlight };
      if (s.kind === 'forward') {
        const run = await forwardRun(ctx, sink, forwardSettings(s.inFlight), s.n);
        add(forward, key, run);
        ({ spanRate: rate, received } = run);
      } else if (s.kind === 'raw-loaded') {
        const run = await loadedRawRun(ctx, sink, how, s.n, Math.round(LOAD_FACTOR * s.n));
        add(loaded, key, run);
        ({ rate, received } = run);
      } else {
        const run = await rawRun(sink, how, s.n);
        add(raw, key, run);
        ({ rate, received } = run);
      }
      ctx.log(`forward rep ${rep} ${label(s)}: ${int(rate)} msg/s, broker holds ${int(received)}`);
    }
  }
  const runs: Runs = {
    forward: (broker, inFlight) => forward.get(keyOf(broker, 'forward', 'window', inFlight)) ?? [],
    raw: (broker, inFlight, style = 'window') =>
      raw.get(keyOf(broker, 'raw', style, style === 'all' ? 0 : inFlight)) ?? [],
    loaded: (broker) => loaded.get(keyOf(broker, 'raw-loaded', 'window', DEFAULT_IN_FLIGHT)) ?? [],
  };
  return runs;
}

/**
 * Forwarding to a broker (issue: forward()): pg-outbox's forward() next to the broker's own publish rate from the
 * same client library in the same process and run, at the same number of unconfirmed publishes in flight.
 */
export async function forwardScenario(ctx: BenchContext): Promise<ScenarioReport> {
  const n = envNumber('BENCH_FORWARD_N', 20_000);
  const nOne = envNumber('BENCH_FORWARD_ONE_N', 1_000);
  const windows = envWindows();
  const brokers: BrokerName[] = ['RabbitMQ', 'NATS'];
  const settings: Setting[] = brokers.flatMap((broker) => [
    ...windows.flatMap((inFlight) =>
      (['forward', 'raw'] as const).map((kind): Setting => ({
        broker,
        kind,
        inFlight,
        style: 'window',
        n: inFlight === 1 ? nOne : n,
      })),
    ),
    { broker, kind: 'raw-loaded', inFlight: DEFAULT_IN_FLIGHT, style: 'window', n },
    ...(broker === 'RabbitMQ'
      ? [{ broker, kind: 'raw' as const, inFlight: 0, style: 'all' as const, n }]
      : []),
  ]);
  // pg-outbox's own side at the default: the same backlog forwarded to a target that confirms at once.
  settings.push({ broker: NO_BROKER, kind: 'forward', inFlight: DEFAULT_IN_FLIGHT, style: 'window', n });

  const sinks = new Map<BrokerName, BrokerSink>();
  let runs: Runs;
  try {
    sinks.set('RabbitMQ', await rabbitSink());
    sinks.set('NATS', await natsSink());
    sinks.set(NO_BROKER, noBrokerSink());
    runs = await measure(ctx, settings, sinks);
  } finally {
    for (const sink of sinks.values()) await sink.close();
    await dropSchemas(ctx.pool, FORWARD_SCHEMA);
  }

  const errors = [...brokers, NO_BROKER]
    .flatMap((b) => windows.flatMap((w) => runs.forward(b, w)))
    .flatMap((r) => r.errors);
  const notes = [
    'Reproduce: `npm run bench:forward`; sizes: `BENCH_FORWARD_N` (20000), `BENCH_FORWARD_ONE_N` (1000: the ' +
      'backlog at 1 in flight, a round trip per message), `BENCH_FORWARD_IN_FLIGHT` (1,50,200,1000), ' +
      '`BENCH_REPS` (3). Brokers: `AMQP_URL`, `NATS_URL`.',
  ];
  if (errors.length > 0)
    notes.push(`The forwarding Outboxes emitted ${errors.length} error(s); the first: ${errors[0]}`);
  const defaultRatio = (b: BrokerName, style: RawPublish['style'] = 'window') =>
    medianOf(runs.forward(b, DEFAULT_IN_FLIGHT), (x) => x.spanRate) /
    medianOf(runs.raw(b, DEFAULT_IN_FLIGHT, style), (x) => x.rate);
  const lowest = windows[0] ?? DEFAULT_IN_FLIGHT;
  return {
    name: 'forward',
    title: '13. Forwarding to a broker: forward() next to the broker’s own publish rate',
    repetitions: `${ctx.config.reps} repetitions per setting`,
    method: [
      `Forward: a fresh schema ${FORWARD_SCHEMA} per run, one subscription, ${int(n)} messages of about 1 KB of ` +
        `JSON (${int(nOne)} at 1 in flight) published in batches of 1,000 and fanned out by a relay before the ` +
        `clock starts; then an Outbox with the relay off (its own pg Pool of ${FORWARD_POOL_MAX}) runs ` +
        'forward() as its only consumer, concurrency = the publishes in flight. forward, msg/s: done deliveries / ' +
        '(last ack − first hand-out), audit trail, database clock (it includes the target’s connect on the ' +
        'first publish); from start(): n / (outbox.start() until the deliveries table is empty, polled every ' +
        '10 ms). Arrived: the broker holds exactly n messages after the run.',
      'Raw publish: the same client library in the same process, on a connection made before the clock starts, ' +
        'the same body, message id, headers and flags as the target sends; in flight = that many publisher ' +
        'slots, each awaiting its confirm before the next publish (as forward()’s handler slots do). Timed from ' +
        'the first publish to the last confirm.',
      'RabbitMQ: amqplib confirm channel, persistent + mandatory, to a durable topic exchange with one durable ' +
        'classic queue bound (purged before each run; the confirm follows the queue’s write). NATS: ' +
        '@nats-io/jetstream js.publish with Nats-Msg-Id, to a file-backed stream made anew for each run (message ' +
        'ids restart with each fresh schema; a new stream also starts an empty duplicate window). Settings, both ' +
        'brokers, interleaved within each repetition; exchange, queue and stream deleted at the end.',
      'Pipeline: the forward() target is wrapped to count its send() calls unresolved at once and time each one ' +
        '(publish to confirm); the raw publish times each publish the same way. Mean in flight well under the ' +
        'concurrency means the handler slots wait for deliveries (claims, acks), not for the broker. Rows per ' +
        'claim / ack: done deliveries ÷ distinct attempt / completion times (now() of each claim / ack ' +
        'statement). CPU: cores busy over the timed part, the whole machine (os.cpus(), every process: ' +
        'Postgres, the broker, this one) and this process alone. No broker: forward() to a target whose send() ' +
        'resolves on the next turn of the event loop, pg-outbox’s own side of forwarding on this machine.',
      `Raw beside pg-outbox’s side: the raw publish at ${DEFAULT_IN_FLIGHT} in flight, started once a ` +
        `no-broker forward of ${LOAD_FACTOR}× as many messages (its own fresh schema and backlog) has acked its ` +
        'first delivery, in this process: the broker’s rate while Postgres and this process do the ' +
        'forwarder’s claims and acks beside it, on the same cores. The load runs at the no-broker rate, faster ' +
        'than the forwarder needs to feed the broker, so this rate is a lower bound on the broker’s share.',
    ],
    tables: [
      ...brokers.map((b) => ({
        caption: `${b}, msg/s (median; spread = min–max)`,
        table: rateTable(b, windows, runs),
      })),
      {
        caption:
          'The forwarder’s pipeline (median over repetitions; most = max): send() calls unresolved at once, ' +
          'time-weighted from the first send to the last confirm, and the mean time from a publish to its confirm',
        table: pipelineTable(brokers, windows, runs),
      },
    ],
    ratios: [
      ...brokers.map(
        (b) =>
          `${b}: forward ÷ raw publish, ${DEFAULT_IN_FLIGHT} in flight = ${ratio(defaultRatio(b))}` +
          (b === 'RabbitMQ' ? `; ÷ fire all, then waitForConfirms = ${ratio(defaultRatio(b, 'all'))}` : ''),
      ),
      ...brokers.map(
        (b) =>
          `${b}: forward ÷ raw publish beside pg-outbox’s side (no-broker forward in this process), ` +
          `${DEFAULT_IN_FLIGHT} in flight = ` +
          ratio(
            medianOf(runs.forward(b, DEFAULT_IN_FLIGHT), (x) => x.spanRate) /
              medianOf(runs.loaded(b), (x) => x.rate),
          ),
      ),
      ...brokers.map(
        (b) =>
          `${NO_BROKER} (pg-outbox’s side alone) ÷ ${b} raw publish, ${DEFAULT_IN_FLIGHT} in flight = ` +
          ratio(
            medianOf(runs.forward(NO_BROKER, DEFAULT_IN_FLIGHT), (x) => x.spanRate) /
              medianOf(runs.raw(b, DEFAULT_IN_FLIGHT), (x) => x.rate),
          ),
      ),
      ...brokers.map(
        (b) =>
          `${b}: forward at ${DEFAULT_IN_FLIGHT} in flight ÷ at ${lowest} = ` +
          ratio(
            medianOf(runs.forward(b, DEFAULT_IN_FLIGHT), (x) => x.spanRate) /
              medianOf(runs.forward(b, lowest), (x) => x.spanRate),
          ),
      ),
    ],
    targets: targets(brokers, windows, runs),
    notes,
  };
}
