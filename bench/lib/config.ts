/** Benchmark sizes, each overridable by an environment variable so a quick run or a bigger one needs no edit. */

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw.replaceAll('_', ''));
  if (!Number.isInteger(value) || value < 0)
    throw new Error(`${name} must be a non-negative integer, got ${raw}`);
  return value;
}

export interface BenchConfig {
  /** Repetitions per system per scenario; medians and spreads are over these. */
  reps: number;
  /** Publish: seconds each (system, messages per transaction, producers) run lasts. */
  publishSeconds: number;
  /** Drain: messages waiting before the consumers start. */
  drainN: number;
  /** Drain: the larger backlog, ours at its defaults against the peers (0: skipped). */
  drainBigN: number;
  /** Fan-out: messages published to the topic that 10 subscriptions follow. */
  fanoutN: number;
  fanoutSubscriptions: number;
  /** Latency: messages per second, and for how long. */
  latencyRate: number;
  latencySeconds: number;
  /** Lateness: delayed messages, due evenly over a window of this many seconds. */
  latenessN: number;
  latenessWindowSeconds: number;
  /** Backlog: the largest number of waiting rows (the levels are 0, 1M and this). */
  backlogMax: number;
  /** Backlog: timed claims per batch size and level. */
  backlogClaims: number;
  /** Relay backlog: the largest number of messages waiting for the relay (the levels are 100k and this). */
  relayBacklogMax: number;
  /**
   * Relay backlog: the root of another checkout of pg-outbox (e.g. the previous commit) whose relay is measured in
   * the same run, interleaved with this one's; empty for none.
   */
  relayBaseline: string;
}

export function readConfig(): BenchConfig {
  return {
    reps: Math.max(1, envInt('BENCH_REPS', 3)),
    publishSeconds: Math.max(1, envInt('BENCH_PUBLISH_SECONDS', 2)),
    drainN: envInt('BENCH_DRAIN_N', 50_000),
    drainBigN: envInt('BENCH_DRAIN_BIG_N', 250_000),
    fanoutN: envInt('BENCH_FANOUT_N', 2_000),
    fanoutSubscriptions: Math.max(1, envInt('BENCH_FANOUT_SUBSCRIPTIONS', 10)),
    latencyRate: Math.max(1, envInt('BENCH_LATENCY_RATE', 200)),
    latencySeconds: Math.max(1, envInt('BENCH_LATENCY_SECONDS', 10)),
    latenessN: envInt('BENCH_LATENESS_N', 2_000),
    latenessWindowSeconds: Math.max(1, envInt('BENCH_LATENESS_WINDOW_SECONDS', 10)),
    backlogMax: envInt('BENCH_BACKLOG_MAX', 10_000_000),
    backlogClaims: Math.max(1, envInt('BENCH_BACKLOG_CLAIMS', 200)),
    relayBacklogMax: Math.max(1, envInt('BENCH_RELAY_BACKLOG_MAX', 1_000_000)),
    relayBaseline: process.env['BENCH_RELAY_BASELINE'] ?? '',
  };
}
