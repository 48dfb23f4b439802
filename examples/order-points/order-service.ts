import type pg from 'pg';
import type { Outbox, PublishResult } from '../../src/index.js';

export interface Order {
  id: number;
  customer: string;
  amount: number;
}

/** The `order.paid` payload, read by the points service and the notifications. */
export interface OrderPaid {
  orderId: number;
  customer: string;
  amount: number;
}

/** What the order service offers; both writes commit the business row and its outbox message together. */
export interface OrderService {
  /** Writes the order ('unpaid') and its delayed `order.close` timer in one transaction. */
  placeOrder(order: Order): Promise<void>;
  /**
   * Marks the order paid, cancels its close timer and publishes `order.paid`, in one transaction. With a
   * requestId (the client's retry-safe request id) a retried request writes nothing and returns duplicate: true;
   * without one, every call publishes again, and the consumers have to suppress the duplicates.
   */
  payOrder(orderId: number, requestId?: string): Promise<PublishResult>;
}

async function inTransaction<T>(pool: pg.Pool, fn: (tx: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
    throw error;
  } finally {
    client.release(broken);
  }
}

export function createOrderService(pool: pg.Pool, outbox: Outbox, closeAfterMs: number): OrderService {
  return {
    placeOrder: (order) =>
      inTransaction(pool, async (tx) => {
        // No order without its close timer, no timer without its order: both commit or neither.
        const close = await outbox.publish(
          tx,
          'order.close',
          { orderId: order.id },
          { key: `order-${order.id}`, delayMs: closeAfterMs },
        );
        await tx.query(
          `INSERT INTO shop.orders (id, customer, amount, status, close_message_id)
           VALUES ($1::int, $2::text, $3::int, 'unpaid', $4::bigint)`,
          [order.id, order.customer, order.amount, close.id],
        );
      }),

    payOrder: (orderId, requestId) =>
      inTransaction(pool, async (tx) => {
        // FOR UPDATE: a payment and the close timer's UPDATE of the same order take turns.
        const { rows } = await tx.query<Order & { status: string; close_message_id: string }>(
          `SELECT id, customer, amount, status, close_message_id
           FROM shop.orders
           WHERE id = $1::int
           FOR UPDATE`,
          [orderId],
        );
        const order = rows[0];
        if (!order) throw new Error(`order ${orderId} does not exist`);
        if (order.status === 'cancelled')
          throw new Error(`order ${orderId} was cancelled before it was paid`);
        const payload: OrderPaid = { orderId, customer: order.customer, amount: order.amount };
        const paid = await outbox.publish(tx, 'order.paid', payload, {
          key: `order-${orderId}`,
          dedupKey: requestId,
        });
        // The first request with this requestId did all of it; this retry writes nothing.
        if (paid.duplicate) return paid;
        await tx.query(
          `UPDATE shop.orders
           SET status = 'paid', paid_at = COALESCE(paid_at, now())
           WHERE id = $1::int`,
          [orderId],
        );
        // A paid order must never be auto-cancelled: drop its close timer in this same transaction.
        await outbox.cancel(tx, order.close_message_id);
        return paid;
      }),
  };
}
