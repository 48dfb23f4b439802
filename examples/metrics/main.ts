/**
 * Prometheus metrics of a running outbox, served over HTTP: `npm run example:metrics`, then
 * `curl http://127.0.0.1:9464/metrics`. A producer publishes a few orders a second; one consumer group handles
 * them and fails now and then, so the retry counters move too. PORT picks the port (0: any free one); Ctrl-C
 * stops it gracefully. Uses DATABASE_URL when set, else starts an embedded PostgreSQL.
 */
import { createServer } from 'node:http';
import pg from 'pg';
import { pino } from 'pino';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { createOutbox } from '../../src/index.js';
import { startPostgres } from '../../test/helpers/postgres.js';

const server = await startPostgres();
const pool = new pg.Pool({ connectionString: server.url, max: 10 });
pool.on('error', (error) => console.error(`idle connection lost: ${error.message}`));
const outbox = createOutbox({
  pool,
  schema: 'metrics_example',
  logger: pino({ level: process.env.LOG_LEVEL ?? 'warn' }),
});
await outbox.migrate();

// One registry for the process: Node's own metrics beside the outbox's.
const registry = new Registry();
collectDefaultMetrics({ register: registry });
const metrics = await outbox.metrics({ registry });

outbox.subscribe('shipping', { topics: ['order.paid'], retry: { minDelayMs: 100 } }, (message) => {
  if (message.attempt === 1 && Math.random() < 0.1) throw new Error('carrier API timed out');
});
await outbox.start();

let orderId = 0;
const producer = setInterval(() => {
  orderId += 1;
  void outbox
    .publish(pool, 'order.paid', { orderId, amount: 10 + (orderId % 90) }, { key: `order-${orderId}` })
    .catch((error: unknown) => console.error('publish failed', error));
}, 200);

const http = createServer((req, res) => {
  if (req.url !== '/metrics') {
    res.writeHead(404).end('try /metrics\n');
    return;
  }
  registry.metrics().then(
    (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
    (error: unknown) => res.writeHead(500).end(String(error)),
  );
});
http.listen(Number(process.env.PORT ?? 9464), '127.0.0.1', () => {
  const address = http.address();
  const port = typeof address === 'object' && address !== null ? address.port : '?';
  console.log(`serving http://127.0.0.1:${port}/metrics`);
});

async function shutdown(): Promise<void> {
  clearInterval(producer);
  http.close();
  await outbox.stop();
  metrics.close();
  await pool.end();
  await server.stop();
  console.log(`stopped after ${orderId} orders`);
}
process.once('SIGINT', () => void shutdown());
process.once('SIGTERM', () => void shutdown());
