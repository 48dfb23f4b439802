/** Order statistics over small samples. Percentiles use the nearest-rank method: always an observed value. */

export function sorted(values: readonly number[]): number[] {
  return [...values].sort((a, b) => a - b);
}

/** Nearest-rank percentile (p in 0..100) of already sorted values; NaN when empty. */
export function percentile(ascending: readonly number[], p: number): number {
  if (ascending.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * ascending.length);
  return ascending[Math.min(ascending.length - 1, Math.max(0, rank - 1))] ?? NaN;
}

export function median(values: readonly number[]): number {
  const s = sorted(values);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

/** Median and range of repeated measurements: with 3 repetitions the range is the honest spread. */
export function summarize(runs: readonly number[]): Summary {
  const s = sorted(runs);
  return { median: median(s), min: s[0] ?? NaN, max: s.at(-1) ?? NaN, runs: [...runs] };
}

export interface Distribution {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function distribution(values: readonly number[]): Distribution {
  const s = sorted(values);
  return {
    count: s.length,
    p50: percentile(s, 50),
    p95: percentile(s, 95),
    p99: percentile(s, 99),
    max: s.at(-1) ?? NaN,
  };
}
