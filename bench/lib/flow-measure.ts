import type pg from 'pg';
import type { HandledInterval } from './flow-processes.js';

/** A subscription's hand-outs as the audit trail recorded them, by the database clock. */
export interface HandOuts {
  /** Deliveries of the subscription. */
  n: number;
  /** Distinct consumers (host:pid:instance) that handed them out. */
  consumers: number;
  /** From the first hand-out to the last (first_attempt_at, the claim statement's now()). */
  spanS: number;
  /** From the first hand-out to the last completion. */
  drainS: number;
  /** Hand-outs in each whole second after the first hand-out, the first and the last (partial) second left out. */
  perSecond: number[];
}

export async function readHandOuts(pool: pg.Pool, schema: string, subscription: string): Promise<HandOuts> {
  const { rows } = await pool.query<{ n: number; consumers: number; span_s: number; drain_s: number }>(
    `SELECT count(*)::int AS n,
            count(DISTINCT consumer)::int AS consumers,
            extract(epoch FROM max(first_attempt_at) - min(first_attempt_at))::float8 AS span_s,
            extract(epoch FROM max(completed_at) - min(first_attempt_at))::float8 AS drain_s
     FROM ${schema}.audit_deliveries
     WHERE subscription = $1::text`,
    [subscription],
  );
  const buckets = await pool.query<{ second: number; n: number }>(
    `WITH t0 AS (
       SELECT min(first_attempt_at) AS at
       FROM ${schema}.audit_deliveries
       WHERE subscription = $1::text
     )
     SELECT floor(extract(epoch FROM d.first_attempt_at - t0.at))::int AS second, count(*)::int AS n
     FROM ${schema}.audit_deliveries d
     CROSS JOIN t0
     WHERE d.subscription = $1::text
     GROUP BY 1`,
    [subscription],
  );
  const counts = new Map(buckets.rows.map((b) => [b.second, b.n]));
  const last = Math.max(0, ...counts.keys());
  const perSecond = Array.from({ length: Math.max(0, last - 1) }, (_, i) => counts.get(i + 1) ?? 0);
  const row = rows[0];
  return {
    n: row?.n ?? 0,
    consumers: row?.consumers ?? 0,
    spanS: row?.span_s ?? NaN,
    drainS: row?.drain_s ?? NaN,
    perSecond,
  };
}

/**
 * The most handler calls of one key that overlapped in time, per key (keyless calls left out). Intervals are
 * half-open: a call that starts in the instant another ended does not overlap it.
 */
export function mostInFlightPerKey(handled: readonly HandledInterval[]): Map<string, number> {
  const byKey = new Map<string, [number, number][]>();
  for (const { key, start, end } of handled) {
    if (key === null) continue;
    const points = byKey.get(key) ?? [];
    points.push([start, 1], [end, -1]);
    byKey.set(key, points);
  }
  const most = new Map<string, number>();
  for (const [key, points] of byKey) {
    points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let now = 0;
    let peak = 0;
    for (const [, step] of points) {
      now += step;
      peak = Math.max(peak, now);
    }
    most.set(key, peak);
  }
  return most;
}
