import { Countdown } from './countdown.js';
import { preciseNow, waitFor } from './db.js';
import type { QueueSystem } from './system.js';

/**
 * Starts the system's consumers on work that is already waiting and times them until every one of `expected`
 * deliveries has been handled and its ack is visible in the database (pg-boss completes a batch after its
 * handler returns, graphile-worker and pg-outbox write acks in batches: the handler count alone would stop the
 * clock early). The clock starts before start(), so consumer start-up is included; it is tens of ms for each.
 */
export async function timedDrain(
  system: QueueSystem,
  expected: number,
  timeoutMs = 600_000,
): Promise<number> {
  const handled = new Countdown(expected);
  const started = preciseNow();
  await system.start(() => handled.hit());
  try {
    await handled.wait(`${system.label} handling every delivery`, timeoutMs);
    await waitFor(`${system.label} acking every delivery`, async () => (await system.unacked()) === 0, {
      timeoutMs,
      intervalMs: 2,
    });
    return preciseNow() - started;
  } finally {
    await system.stop();
  }
}
