/**
 * pg-outbox demo: an order service writes orders and their outbox messages in one transaction; two consumer
 * groups react. Run with `npm run demo`. Uses DATABASE_URL when set, else starts an embedded PostgreSQL.
 */
import pg from 'pg';
import { pino } from 'pino';
import { createOutbox } from '../src/index.js';
import { startPostgres } from '../test/helpers/postgres.js';

interface OrderPaid {
  orderId: number;
  customer: string;
  amount: number;
}

const server = await startPostgres();
console.log(`PostgreSQL: ${server.source}`);
const pool = new pg.Pool({ connectionString: server.url, max: 10 });
// As pg recommends, the owner of a pool listens for its idle clients' errors. At the end, pool.end() resolves
// before its sockets close, and stopping the embedded server then reports them: expected, so not printed.
let closing = false;
pool.on('error', (error) => {
  if (!closing) console.error(`idle connection lost: ${error.message}`);
});
const outbox = createOutbox({ pool, schema: 'demo_outbox', logger: pino({ level: 'warn' }) });

try {
  await outbox.migrate();
  await pool.query(`DROP TABLE IF EXISTS demo_orders, demo_points`);
  await pool.query(
    `CREATE TABLE demo_orders (id int PRIMARY KEY, customer text NOT NULL, amount int NOT NULL)`,
  );
  await pool.query(`CREATE TABLE demo_points (customer text PRIMARY KEY, points int NOT NULL)`);
  // Declared before any consumer runs: the relay fans out to them from now on.
  await outbox.declareSubscription('points', { topics: ['order.paid'] });
  await outbox.declareSubscription('notifications', { topics: ['order.*'] });

  const orders: OrderPaid[] = [
    { orderId: 1, customer: 'ada', amount: 120 },
    { orderId: 2, customer: 'grace', amount: 80 },
    { orderId: 3, customer: 'ada', amount: 45 },
    { orderId: 4, customer: 'linus', amount: 300 },
  ];
  for (const order of orders) {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('INSERT INTO demo_orders VALUES ($1, $2, $3)', [
        order.orderId,
        order.customer,
        order.amount,
      ]);
      await outbox.publish(client, 'order.paid', order, { key: `order-${order.orderId}` });
      // Order 4 fails after its message was written: the rollback takes the message with it.
      await client.query(order.orderId === 4 ? 'ROLLBACK' : 'COMMIT');
    } finally {
      client.release();
    }
  }
  console.log(`published ${orders.length} orders; order 4 rolled back, so 3 messages exist`);

  const handled = { points: 0, notifications: 0 };
  const done = new Promise<void>((resolve) => {
    const check = () => handled.points === 3 && handled.notifications === 3 && resolve();
    // Transactional mode: the points award and the ack commit together; ctx.once makes a redelivery harmless.
    outbox.subscribe('points', { topics: ['order.paid'], mode: 'transactional' }, async (message, ctx) => {
      const order = message.payload as OrderPaid;
      const { duplicate } = await ctx.once(`order:${order.orderId}`, async (tx) => {
        await tx.query(
          `INSERT INTO demo_points VALUES ($1, $2)
           ON CONFLICT (customer) DO UPDATE SET points = demo_points.points + excluded.points`,
          [order.customer, order.amount],
        );
      });
      console.log(
        `[points]        order ${order.orderId}: +${order.amount} for ${order.customer}${duplicate ? ' (duplicate)' : ''}`,
      );
      handled.points++;
      check();
    });
    // Lease mode: the handler runs outside a transaction, as it would for an e-mail or an HTTP call.
    outbox.subscribe('notifications', { topics: ['order.*'] }, (message) => {
      const order = message.payload as OrderPaid;
      console.log(
        `[notifications] ${message.topic} #${message.id} (attempt ${message.attempt}): tell ${order.customer}`,
      );
      handled.notifications++;
      check();
    });
  });
  await outbox.start();
  await done;
  // stop() waits for in-flight handlers, so the last points transaction has committed before we read.
  await outbox.stop();

  const { rows } = await pool.query<{ customer: string; points: number }>(
    'SELECT customer, points FROM demo_points ORDER BY customer',
  );
  console.log('points:', rows.map((r) => `${r.customer}=${r.points}`).join(', '));
  const status = await outbox.status();
  for (const s of status.subscriptions) {
    console.log(`subscription ${s.name}: pending ${s.pending}, in flight ${s.inFlight}, dead ${s.dead}`);
  }
} finally {
  closing = true;
  await outbox.stop();
  await pool.end();
  await server.stop();
}
