import type pg from 'pg';
import { inTransaction } from './db.js';
import type { OutgoingMessage, QueueSystem } from './system.js';

/** Publishes `messages` through the system's own publish path, `perTx` per transaction, one after another. */
export async function publishAll(
  pool: pg.Pool,
  system: QueueSystem,
  messages: readonly OutgoingMessage[],
  perTx: number,
): Promise<void> {
  for (let i = 0; i < messages.length; i += perTx) {
    const chunk = messages.slice(i, i + perTx);
    await inTransaction(pool, (client) => system.publish(client, chunk));
  }
}

/** n plain messages numbered from 0. */
export function plainMessages(n: number): OutgoingMessage[] {
  return Array.from({ length: n }, (_, i) => ({ payload: { n: i } }));
}
