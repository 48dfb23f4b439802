import type pg from 'pg';
import type { Outbox } from '../../src/index.js';

export interface Report {
  orders: number;
  paid: number;
  cancelled: number;
  pointsAwarded: number;
  notificationsSent: number;
  /** Notifications sent for an order that already had one: 0 with the weak check. */
  notificationDuplicates: number;
}

/** Polls status() until the relay has fanned out everything and no delivery is left to run. */
export async function waitUntilSettled(outbox: Outbox, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await outbox.status();
    const open = status.subscriptions.reduce((n, s) => n + s.pending + s.delayed + s.inFlight, 0);
    if (status.relay.backlog === 0 && open === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`not settled after ${timeoutMs} ms: ${JSON.stringify(status)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function readReport(pool: pg.Pool): Promise<Report> {
  const { rows } = await pool.query<Record<keyof Report, number>>(
    `SELECT
       (SELECT count(*) FROM shop.orders)::int AS orders,
       (SELECT count(*) FROM shop.orders WHERE status = 'paid')::int AS paid,
       (SELECT count(*) FROM shop.orders WHERE status = 'cancelled')::int AS cancelled,
       (SELECT count(*) FROM shop.points)::int AS "pointsAwarded",
       (SELECT count(*) FROM shop.notifications_sent)::int AS "notificationsSent",
       (SELECT count(*) - count(DISTINCT order_id) FROM shop.notifications_sent)::int AS "notificationDuplicates"`,
  );
  const report = rows[0];
  if (!report) throw new Error('report query returned no row');
  return report;
}

/** The invariants of the flow, checked in SQL; returns the ones that do not hold. */
export async function findViolations(pool: pg.Pool, outbox: Outbox): Promise<string[]> {
  const { rows } = await pool.query<Record<string, number>>(
    `SELECT
       (SELECT count(*) FROM shop.orders WHERE status = 'cancelled' AND paid_at IS NOT NULL)::int
         AS "paid orders cancelled",
       (SELECT count(*) FROM shop.points p JOIN shop.orders o ON o.id = p.order_id WHERE o.status <> 'paid')::int
         AS "unpaid orders with points",
       (SELECT count(*) FROM shop.orders o
        WHERE o.status = 'paid' AND (SELECT count(*) FROM shop.points p WHERE p.order_id = o.id) <> 1)::int
         AS "paid orders without exactly one points row",
       (SELECT count(*) FROM shop.orders WHERE status = 'unpaid')::int
         AS "orders still unpaid after their close timer"`,
  );
  const counts = { ...rows[0] };
  const status = await outbox.status();
  counts['dead letters'] = status.subscriptions.reduce((n, s) => n + s.dead, 0);
  return Object.entries(counts)
    .filter(([, n]) => n !== 0)
    .map(([what, n]) => `${what}: ${n}`);
}
