/**
 * pg-outbox example: an order service, a points service (strong check), notifications (weak check) and an
 * auto-cancel of unpaid orders (a delayed message, cancelled by the payment). See README.md beside this file.
 * Run with `npm run example:order-points`. Uses DATABASE_URL when set, else starts a throwaway PostgreSQL
 * (Testcontainers when Docker answers, else embedded); uses Redis at REDIS_URL (default redis://127.0.0.1:6379)
 * when it answers, else runs without the weak check.
 */
import pg from 'pg';
import { pino } from 'pino';
import { createOutbox } from '../../src/index.js';
import { startPostgres } from '../../test/helpers/postgres.js';
import { connectRedis, notificationCheck, subscribeNotifications } from './notifications.js';
import { subscribeOrderCloser } from './order-closer.js';
import { createOrderService } from './order-service.js';
import { subscribePointsService } from './points-service.js';
import { findViolations, readReport, waitUntilSettled } from './report.js';
import { ORDERS, runRequests } from './scenario.js';
import { OUTBOX_SCHEMA, resetSchema } from './schema.js';

/** How long an order may stay unpaid; short, so the example finishes in seconds. */
const CLOSE_AFTER_MS = 1500;
const SETTLE_TIMEOUT_MS = 15_000;

const server = await startPostgres();
console.log(`PostgreSQL: ${server.source}`);
const redisUrl = process.env['REDIS_URL'] ?? 'redis://127.0.0.1:6379';
const connected = await connectRedis(redisUrl);
const redis = 'redis' in connected ? connected.redis : undefined;
const redisHost = new URL(redisUrl).host; // not the whole URL: it may hold a password
console.log(
  'redis' in connected
    ? `Redis: ${redisHost}, notifications use the weak check`
    : `Redis: not reachable at ${redisHost} (${connected.error}); notifications run WITHOUT the weak check, so duplicates get sent`,
);
const logger = pino({ level: process.env['LOG_LEVEL'] ?? 'warn' });
// Two transactional subscriptions of concurrency 10 can hold 20 connections in their handlers' transactions; claims,
// acks and the service's own queries need more (start() warns when the handlers could hold them all).
const pool = new pg.Pool({ connectionString: server.url, max: 30 });
let closing = false;
// As pg recommends: an idle connection that drops must not crash the process. pool.end() resolves before its
// sockets have closed, so stopping an embedded server right after it ends them too; that one is expected.
pool.on('error', (error) => {
  if (!closing) logger.warn({ err: error }, 'idle pool connection lost');
});
const outbox = createOutbox({ pool, schema: OUTBOX_SCHEMA, logger });

try {
  await resetSchema(pool);
  await outbox.migrate();
  // Declared before anything is published: the relay fans out to a subscription from then on.
  await outbox.declareSubscription('points', { topics: ['order.paid'] });
  await outbox.declareSubscription('notifications', { topics: ['order.paid'] });
  await outbox.declareSubscription('order-closer', { topics: ['order.close'] });
  const points = subscribePointsService(outbox);
  const notifications = subscribeNotifications(outbox, pool, redis && notificationCheck(redis));
  const closer = subscribeOrderCloser(outbox);
  await outbox.start();

  const { dedupedRetries } = await runRequests(createOrderService(pool, outbox, CLOSE_AFTER_MS));
  // The close timers come due CLOSE_AFTER_MS after their orders; this returns once they and all else ran.
  await waitUntilSettled(outbox, SETTLE_TIMEOUT_MS);
  await outbox.stop();

  const r = await readReport(pool);
  const sent = redis
    ? `notifications sent ${r.notificationsSent} (duplicates suppressed ${notifications.duplicatesSuppressed()})`
    : `notifications sent ${r.notificationsSent} (no weak check: ${r.notificationDuplicates} duplicates sent)`;
  console.log(
    `close timers: ${ORDERS} set, ${closer.fired()} fired, ${ORDERS - closer.fired()} cancelled by payment`,
  );
  console.log(
    `orders ${r.orders}, paid ${r.paid}, auto-cancelled ${r.cancelled}, ` +
      `points awarded ${r.pointsAwarded} (duplicates suppressed ${points.duplicatesSuppressed()}), ${sent}, ` +
      `producer dedup: ${dedupedRetries} retried request wrote nothing`,
  );
  const violations = await findViolations(pool, outbox);
  if (violations.length > 0) {
    console.error(`checks FAILED: ${violations.join('; ')}`);
    process.exitCode = 1;
  } else {
    console.log(
      'checks: no paid order cancelled, no unpaid order with points, one points row per paid order',
    );
  }
} finally {
  closing = true;
  await outbox.stop();
  await redis?.close();
  await pool.end();
  await server.stop();
}
