import type { Outbox } from '../../src/index.js';

/**
 * The close timer: `order.close` is published with a delay when the order is placed, and comes due after it.
 * A payment cancels it in the payment's transaction, so here it fires only for orders still unpaid. The
 * `status = 'unpaid'` condition is the second guard: the UPDATE can never cancel a paid order.
 */
export function subscribeOrderCloser(outbox: Outbox): { fired: () => number } {
  let fired = 0;
  outbox.subscribe(
    'order-closer',
    { topics: ['order.close'], mode: 'transactional' },
    async (message, ctx) => {
      const { orderId } = message.payload as { orderId: number };
      await ctx.tx.query(
        `UPDATE shop.orders
       SET status = 'cancelled'
       WHERE id = $1::int
         AND status = 'unpaid'`,
        [orderId],
      );
      fired++;
    },
  );
  return { fired: () => fired };
}
