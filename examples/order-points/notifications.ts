import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { createClient } from 'redis';
import { createWeakCheck, type Outbox, type RedisCommands, type WeakCheck } from '../../src/index.js';
import type { OrderPaid } from './order-service.js';

/** What this example needs of a Redis client: commands for the weak check, and close(). */
export type Redis = RedisCommands & { close(): Promise<unknown> };

/** Connects to Redis, or returns the reason it could not: the example then runs without the weak check. */
export async function connectRedis(url: string): Promise<{ redis: Redis } | { error: string }> {
  // No reconnects: an unreachable Redis should fail fast here, not retry forever.
  const redis = createClient({ url, socket: { connectTimeout: 1000, reconnectStrategy: false } });
  redis.on('error', () => undefined); // connect() rejects with the same error; nothing else to do with it
  try {
    await redis.connect();
    return { redis };
  } catch (error) {
    return { error: error instanceof Error ? error.message || error.name : String(error) };
  }
}

/** The weak check, with keys of this run only (order ids restart at 1 on every run). */
export function notificationCheck(redis: Redis): WeakCheck {
  return createWeakCheck(redis, {
    prefix: `pg-outbox-example:order-points:${randomUUID()}:`,
    ttlMs: 10 * 60_000,
    // A concurrent duplicate is asked to retry this soon, by when the first one has marked the key done.
    busyRetryMs: 200,
  });
}

/**
 * "Your order is paid": an effect outside the database, like an SMS or a push, so the handler runs in lease mode
 * (no transaction held open during the call) and uses the weak check. Without Redis every delivery sends.
 */
export function subscribeNotifications(
  outbox: Outbox,
  pool: pg.Pool,
  weak: WeakCheck | undefined,
): { duplicatesSuppressed: () => number } {
  let duplicates = 0;
  outbox.subscribe('notifications', { topics: ['order.paid'] }, async (message) => {
    const order = message.payload as OrderPaid;
    const send = async () => {
      // Stands in for the SMS gateway call.
      await pool.query(
        `INSERT INTO shop.notifications_sent (order_id, customer) VALUES ($1::int, $2::text)`,
        [order.orderId, order.customer],
      );
    };
    if (!weak) return send();
    const { duplicate } = await weak.once('notifications', `order:${order.orderId}`, send);
    if (duplicate) duplicates++;
  });
  return { duplicatesSuppressed: () => duplicates };
}
