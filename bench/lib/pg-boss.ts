import PgBoss from 'pg-boss';
import type pg from 'pg';
import { count, createPool, dropSchemas } from './db.js';
import type { BenchPayload, DeliveryHandler, OutgoingMessage, QueueSystem } from './system.js';

const EVENT = 'bench.topic';

/**
 * pg-boss 10 with its best documented throughput settings: the lowest polling interval it accepts (0.5 s; it has
 * no LISTEN/NOTIFY in v10), batch fetches, and several workers per queue (each work() call adds one polling
 * worker). A v10 worker waits out the rest of its polling interval after every fetch that took less, so until the
 * database becomes the limit its throughput is about workers x batchSize per 0.5 s. Measured on this machine
 * (50,000 waiting jobs): 4 x 1000 8.2k/s, 8 x 1000 16k/s, 8 x 2000 32k/s, 4 x 5000 41k/s, 8 x 5000 44k/s. The
 * default, 8 workers x 2000, stays in the range of the other systems' claim sizes (pg-outbox 1,000, graphile-worker
 * 500); the drain scenario also runs 8 x 5000. Maintenance (supervise) and cron (schedule) are off: they only add
 * background queries to a short run.
 */
const PG_BOSS_TUNING = { workers: 8, batchSize: 2000, pollingIntervalSeconds: 0.5, maxPool: 12 };

export interface PgBossOptions {
  url: string;
  label?: string;
  schema?: string;
  /** Queues subscribed to the one event: fan-out through publish()/subscribe(). */
  queues?: number;
  workers?: number;
  batchSize?: number;
}

export function pgBossSystem(options: PgBossOptions): QueueSystem {
  const {
    url,
    schema = 'bench_pgboss',
    queues = 1,
    workers = PG_BOSS_TUNING.workers,
    batchSize = PG_BOSS_TUNING.batchSize,
  } = options;
  const names = Array.from({ length: queues }, (_, i) => `bench_${i}`);
  // Workers hold a connection only while fetching or completing; a shared machine has 100 connections in all.
  const poolMax = Math.min(workers * queues + 2, PG_BOSS_TUNING.maxPool);
  // Admin queries (unacked, VACUUM) on a pool of our own; pg-boss opens its own pool for its workers.
  const admin = createPool(url, 2);
  let boss: PgBoss | null = null;

  const current = (): PgBoss => {
    if (boss === null) throw new Error('pg-boss system used before reset()');
    return boss;
  };
  const stopBoss = async () => {
    const b = boss;
    boss = null;
    await b?.stop({ graceful: true, wait: true, timeout: 5_000 });
  };
  // pg-boss runs caller-transaction statements through any object with executeSql(). Its publish() sends to all
  // subscribed queues at once; on one client they queue anyway, and chaining them keeps pg from warning about
  // concurrent queries on a client (a deprecation in pg 8).
  const inTx = (client: pg.PoolClient) => {
    let last: Promise<unknown> = Promise.resolve();
    return {
      db: {
        executeSql: (text: string, values: unknown[]) => {
          const next = last.then(() => client.query(text, values));
          last = next.catch(() => undefined);
          return next;
        },
      },
    };
  };
  const job = (m: OutgoingMessage, name: string) => ({
    name,
    data: m.payload,
    ...(m.deliverAt ? { startAfter: m.deliverAt.toISOString() } : {}),
  });

  return {
    label: options.label ?? 'pg-boss',
    settings:
      `schema ${schema}, ${queues} queue(s)${queues > 1 ? ' subscribed to one event (publish/subscribe)' : ''}; ` +
      `${workers} work() worker(s) per queue, batchSize ${batchSize}, pollingIntervalSeconds ` +
      `${PG_BOSS_TUNING.pollingIntervalSeconds} (its minimum), pool max ${poolMax}; supervise and schedule off`,
    publishPath:
      queues > 1
        ? 'boss.publish(event, data, { db }) per message (one job per subscribed queue)'
        : 'boss.send(name, data, { db }) for one message, boss.insert(jobs, { db }) for many',
    async reset() {
      await stopBoss();
      await dropSchemas(admin, schema);
      boss = new PgBoss({
        connectionString: url,
        schema,
        max: poolMax,
        supervise: false,
        schedule: false,
      });
      boss.on('error', (error) => console.warn(`[bench] pg-boss error: ${error.message}`));
      await boss.start();
      for (const name of names) {
        await boss.createQueue(name);
        if (queues > 1) await boss.subscribe(EVENT, name);
      }
    },
    async publish(client, messages) {
      const b = current();
      const db = inTx(client);
      if (queues > 1) {
        // publish() has no batch form: one call per message, each sending to every subscribed queue.
        for (const m of messages) {
          await b.publish(EVENT, m.payload, { ...db, ...(m.deliverAt ? { startAfter: m.deliverAt } : {}) });
        }
        return;
      }
      const name = names[0] ?? 'bench_0';
      const first = messages[0];
      if (messages.length === 1 && first !== undefined) {
        await b.send(name, first.payload, {
          ...db,
          ...(first.deliverAt ? { startAfter: first.deliverAt } : {}),
        });
        return;
      }
      await b.insert(
        messages.map((m) => job(m, name)),
        db,
      );
    },
    async prepare() {
      await admin.query(`VACUUM ANALYZE ${schema}.job`);
    },
    async start(handler: DeliveryHandler) {
      const b = current();
      for (const name of names) {
        for (let i = 0; i < workers; i++) {
          await b.work<BenchPayload>(
            name,
            { batchSize, pollingIntervalSeconds: PG_BOSS_TUNING.pollingIntervalSeconds },
            (jobs) => {
              for (const j of jobs) handler(j.data);
              return Promise.resolve();
            },
          );
        }
      }
    },
    async stop() {
      if (boss === null) return;
      for (const name of names) await boss.offWork(name);
    },
    unacked: () => count(admin, `SELECT count(*) AS n FROM ${schema}.job WHERE state < 'completed'`),
    async close() {
      await stopBoss();
      await dropSchemas(admin, schema);
      await admin.end();
    },
  };
}
