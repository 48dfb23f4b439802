import type { OrderService } from './order-service.js';

/** The scenario is fixed, so every run prints the same numbers. */
export const ORDERS = 20;
const CUSTOMERS = ['ada', 'grace', 'linus', 'barbara'] as const;
/** Orders 5, 10, 15 and 20 are never paid: their close timers fire. */
const neverPaid = (id: number) => id % 5 === 0;
/** Payments a client retried without its request id: each retry publishes `order.paid` again. */
const RETRIED_WITHOUT_REQUEST_ID = new Set([3, 7, 11]);
/** A payment retried with the same request id: the producer's dedupKey turns it into a no-op. */
const RETRIED_WITH_REQUEST_ID = new Set([2]);

/**
 * Places each order and pays it right away (most of them), with the retries above; an order's payment follows
 * it within milliseconds, far inside its close delay. Returns how many retries the producer deduplicated.
 */
export async function runRequests(service: OrderService): Promise<{ dedupedRetries: number }> {
  let dedupedRetries = 0;
  for (let id = 1; id <= ORDERS; id++) {
    await service.placeOrder({ id, customer: CUSTOMERS[id % CUSTOMERS.length] ?? 'ada', amount: 10 * id });
    if (neverPaid(id)) continue;
    const requestId = `pay-${id}`;
    const first = await service.payOrder(id, requestId);
    if (RETRIED_WITHOUT_REQUEST_ID.has(id)) await service.payOrder(id);
    if (RETRIED_WITH_REQUEST_ID.has(id)) {
      const retry = await service.payOrder(id, requestId);
      if (retry.duplicate && retry.id === first.id) dedupedRetries++;
    }
  }
  return { dedupedRetries };
}
