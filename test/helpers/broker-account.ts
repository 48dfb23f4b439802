import type pg from 'pg';
import { count } from './outbox.js';

/**
 * The total-queue account of a forwarding run, counted on the broker side: every published id against every copy
 * the broker holds or delivered.
 */
export interface BrokerAccount {
  published: number;
  /** Copies on the broker side, duplicates included. */
  received: number;
  /** Published, never on the broker side. */
  lost: number;
  /** On the broker side, never published. */
  unexpected: number;
  /** Copies beyond the first, over all ids. */
  duplicated: number;
  duplicatedIds: string[];
  /** The most copies of one id. */
  maxCopies: number;
}

export function brokerAccount(published: readonly string[], received: readonly string[]): BrokerAccount {
  const copies = new Map<string, number>();
  for (const id of received) copies.set(id, (copies.get(id) ?? 0) + 1);
  const ids = new Set(published);
  const duplicatedIds = [...copies].filter(([, n]) => n > 1).map(([id]) => id);
  return {
    published: published.length,
    received: received.length,
    lost: published.filter((id) => !copies.has(id)).length,
    unexpected: [...copies.keys()].filter((id) => !ids.has(id)).length,
    duplicated: [...copies.values()].reduce((sum, n) => sum + n - 1, 0),
    duplicatedIds,
    maxCopies: Math.max(0, ...copies.values()),
  };
}

/** One line for the test log, so a run shows its numbers. */
export function printAccount(label: string, a: BrokerAccount, extra: Record<string, number> = {}): void {
  const more = Object.entries(extra).map(([k, v]) => `, ${k} ${v}`);
  console.log(
    `account ${label}: published ${a.published}, received ${a.received}, lost ${a.lost}, ` +
      `unexpected ${a.unexpected}, duplicated ${a.duplicated}${more.join('')}`,
  );
}

/** Deliveries of a subscription the database counts done. */
export function doneDeliveries(pool: pg.Pool, subscription: string): Promise<number> {
  return count(
    pool,
    `SELECT count(*) AS n FROM outbox.audit_deliveries WHERE subscription = $1 AND status = 'done'`,
    [subscription],
  );
}

/**
 * Message ids of deliveries attempted at least `minAttempts` times and not finished: taken right after a forwarder
 * died, the ones it had sent (or was sending) without recording them done, the only ones a restart may send again.
 */
export async function attemptedIds(
  pool: pg.Pool,
  subscription: string,
  options: { minAttempts: number; unfinished: boolean },
): Promise<Set<string>> {
  const { rows } = await pool.query<{ id: string }>(
    `SELECT message_id::text AS id
     FROM outbox.audit_deliveries
     WHERE subscription = $1
       AND attempts >= $2::int
       AND (NOT $3::boolean OR status NOT IN ('done', 'dead', 'cancelled'))`,
    [subscription, options.minAttempts, options.unfinished],
  );
  return new Set(rows.map((r) => r.id));
}
