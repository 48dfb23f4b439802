import type pg from 'pg';
import { waitFor } from './outbox.js';

export interface LeaseRound {
  /** The delivery's attempt and lease end when the round ended (the first entry: before the first round). */
  attempt: number;
  leasedUntil: Date;
}

/**
 * Shows, by progress instead of a stretch of wall time, that a delivery whose handler runs keeps its lease. Each
 * round waits, by Postgres's clock, until the lease end the delivery had at the round's start has passed, then
 * publishes a sentinel (`publishSentinel` returns its message id) to the same subscription and waits until a
 * claim has taken it. Claims take due rows in available_at order, and a lapsed lease is due at its old end, before
 * the sentinel: a claim that took the sentinel and not the delivery found the lease extended. The caller asserts
 * on what each round saw: the same attempt, a lease end that moved on.
 */
export async function outlastLease(
  pool: pg.Pool,
  deliveryId: string,
  rounds: number,
  publishSentinel: (round: number) => Promise<string>,
  timeoutMs = 20_000,
): Promise<LeaseRound[]> {
  const seen = [await leaseOf(pool, deliveryId)];
  for (let round = 1; round <= rounds; round += 1) {
    const until = seen.at(-1)?.leasedUntil;
    await waitFor(
      `round ${round}: the lease end read before it has passed`,
      () => passed(pool, until),
      timeoutMs,
    );
    const sentinel = await publishSentinel(round);
    await waitFor(
      `round ${round}: sentinel ${sentinel} claimed`,
      async () => {
        const { rows } = await pool.query<{ attempt: number }>(
          'SELECT attempt FROM outbox.message_deliveries WHERE message_id = $1',
          [sentinel],
        );
        return rows.length > 0 && rows.every((r) => r.attempt > 0);
      },
      timeoutMs,
    );
    seen.push(await leaseOf(pool, deliveryId));
  }
  return seen;
}

/** Whether Postgres's now() is past `at`; a Date has lost the microseconds, so by a millisecond. */
async function passed(pool: pg.Pool, at: Date | undefined): Promise<boolean> {
  const { rows } = await pool.query<{ past: boolean }>(
    `SELECT now() > $1::timestamptz + interval '1 millisecond' AS past`,
    [at],
  );
  return rows[0]?.past === true;
}

async function leaseOf(pool: pg.Pool, deliveryId: string): Promise<LeaseRound> {
  const { rows } = await pool.query<{ attempt: number; leased_until: Date | null }>(
    'SELECT attempt, leased_until FROM outbox.deliveries WHERE id = $1',
    [deliveryId],
  );
  const row = rows[0];
  if (!row || row.leased_until === null) throw new Error(`delivery ${deliveryId} is not under a lease`);
  return { attempt: row.attempt, leasedUntil: row.leased_until };
}
