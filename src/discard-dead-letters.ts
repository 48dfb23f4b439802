import type pg from 'pg';
import { isId } from './admin.js';
import { withTransaction } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';
import { assertKnownKeys } from './option-checks.js';
import { discardDeadDeliveries } from './sql/dead-deliveries.js';
import { selectSubscriptionId } from './sql/subscriptions.js';
import { assertSubscriptionName } from './topics.js';

export interface DiscardOptions {
  /** Dead letters to give up on, by delivery id. */
  ids?: readonly (string | number | bigint)[];
  /** Every dead letter of the subscription (instead of `ids`). */
  all?: boolean;
}

function discardIds(options: DiscardOptions): string[] | null {
  assertKnownKeys('discardDeadLetters', options, ['ids', 'all']);
  if (options.all === true && options.ids === undefined) return null;
  if (options.all !== undefined && options.all !== false) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'discardDeadLetters takes `ids` or `all: true`, not both',
      {
        value: options.all,
      },
    );
  }
  const ids = Array.isArray(options.ids) ? options.ids.map(String) : null;
  if (ids === null || !ids.every(isId)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'discardDeadLetters needs `ids` (delivery ids, positive integers) or `all: true`',
      { value: options.ids },
    );
  }
  return ids;
}

/**
 * Gives up on dead letters: they are finished as 'cancelled' (audit_deliveries shows them so, with their history),
 * and an ordered subscription's key that one of them blocked goes on. Returns how many were discarded.
 */
export async function discardDeadLetters(
  pool: pg.Pool,
  s: SchemaName,
  name: string,
  options: DiscardOptions,
): Promise<{ discarded: number }> {
  assertSubscriptionName(name);
  const ids = discardIds(options);
  return withTransaction(pool, async (exec) => {
    const subscriptionId = await selectSubscriptionId(exec, s, name);
    if (subscriptionId === null) {
      throw new OutboxError(
        'OUTBOX_UNKNOWN_SUBSCRIPTION',
        `No subscription named "${name}" in schema "${s.name}"`,
        {
          value: name,
        },
      );
    }
    return { discarded: await discardDeadDeliveries(exec, s, { subscriptionId, ids }) };
  });
}
