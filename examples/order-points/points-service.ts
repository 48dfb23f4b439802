import type { Outbox } from '../../src/index.js';
import type { OrderPaid } from './order-service.js';

/**
 * Points are money-like, so they get the strong check: `ctx.once` records the key `order:<id>` in the same
 * transaction that inserts the points and acks the delivery. A duplicate `order.paid` (a retried request, a
 * redelivery after a crash) finds the key and awards nothing; a concurrent one waits on the key, then does too.
 */
export function subscribePointsService(outbox: Outbox): { duplicatesSuppressed: () => number } {
  let duplicates = 0;
  outbox.subscribe('points', { topics: ['order.paid'], mode: 'transactional' }, async (message, ctx) => {
    const order = message.payload as OrderPaid;
    const { duplicate } = await ctx.once(`order:${order.orderId}`, async (tx) => {
      await tx.query(
        `INSERT INTO shop.points (order_id, customer, points)
         VALUES ($1::int, $2::text, $3::int)`,
        [order.orderId, order.customer, order.amount],
      );
    });
    if (duplicate) duplicates++;
  });
  return { duplicatesSuppressed: () => duplicates };
}
