import type { ForwardTarget } from '../../src/index.js';

/** What a counted target saw during a run: how full forward()'s pipeline was, and how long a confirm took. */
export interface PipelineStats {
  /** The most send() calls unresolved at once. */
  most: number;
  /** Unresolved send() calls averaged over time, from the first send to the last confirm (Little's law: rate × latency). */
  mean: number;
  /** Mean milliseconds from send() to its confirm. */
  latencyMs: number;
}

/**
 * Wraps a target to count its send() calls in flight: whether the forwarder keeps its handler slots busy (the
 * claim loop feeding them) or waits on the database between publishes.
 */
export function countedTarget(target: ForwardTarget): { target: ForwardTarget; stats: () => PipelineStats } {
  let inFlight = 0;
  let most = 0;
  let area = 0;
  let first = NaN;
  let last = NaN;
  let calls = 0;
  let latency = 0;
  const step = (delta: number) => {
    const now = performance.now();
    if (Number.isNaN(first)) first = now;
    else area += inFlight * (now - last);
    last = now;
    inFlight += delta;
    most = Math.max(most, inFlight);
  };
  return {
    target: {
      name: target.name,
      async send(message) {
        const start = performance.now();
        step(1);
        try {
          await target.send(message);
        } finally {
          step(-1);
          calls += 1;
          latency += performance.now() - start;
        }
      },
      close: () => target.close(),
    },
    stats: () => ({ most, mean: area / (last - first), latencyMs: latency / calls }),
  };
}
