import type pg from 'pg';
import type { Logger } from 'pino';
import { inPoolTransaction } from '../db/checkout.js';
import { pgExecutor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { lockDeliveryIds } from '../sql/locks.js';
import { fanOutUndeliveredAndReset, lockRelayState, settleForeignTxIds } from '../sql/relay-reset.js';

export interface ResetRelayResult {
  /** Messages that had no delivery and were fanned out now. */
  messages: number;
  deliveries: number;
}

/**
 * Sets the relay's position to "now, in this cluster" and fans out every committed message that has no delivery
 * yet: the way out after the database moved to another cluster (see OUTBOX_RELAY_CLUSTER_CHANGED), and safe at
 * any time, since a message that has any delivery is never fanned out again. One transaction (see
 * sql/relay-reset.ts) that holds up the relay meanwhile. It reads the whole history, so it needs the schema
 * owner's privileges, not the runtime role's.
 */
export async function resetRelay(
  pool: pg.Pool,
  schema: SchemaName,
  logger: Logger,
): Promise<ResetRelayResult> {
  const log = logger.child({ component: 'relay-reset', schema: schema.name });
  const result = await inPoolTransaction(pool, async (client) => {
    const exec = pgExecutor(client);
    await lockDeliveryIds(exec, schema);
    await lockRelayState(exec, schema);
    const foreignTxIds = await settleForeignTxIds(exec, schema);
    return { foreignTxIds, ...(await fanOutUndeliveredAndReset(exec, schema)) };
  });
  log.warn(result, 'relay position reset');
  return { messages: result.messages, deliveries: result.deliveries };
}
