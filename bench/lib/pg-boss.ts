import { count, createPool, dropSchemas, inCallOrder } from './db.js';
import type { BenchPayload, DeliveryHandler, OutgoingMessage, PeerSystem, SqlClient } from './system.js';

const EVENT = 'bench.topic';

/**
 * The defaults of every pg-boss version here: 8 workers per queue fetching batches of 2000 (in the range of the
 * other systems' claim sizes: pg-outbox 1,000, graphile-worker 500; the drain scenario also runs 5000), and a pool
 * of at most 12. Maintenance (supervise) and cron (schedule) are off: they only add background queries to a short
 * run. What each version adds (polling, LISTEN/NOTIFY, burst fetching) is in its PgBossLibrary.
 */
const PG_BOSS_TUNING = { workers: 8, batchSize: 2000, maxPool: 12 };

/** A job as the bench hands it to pg-boss: its data and, for delayed delivery, startAfter. */
export interface BossJob {
  data: BenchPayload;
  startAfter?: Date;
}

/** pg-boss's { db } option: runs its statements in the caller's transaction. */
export interface BossDb {
  executeSql(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** The calls the bench makes on one pg-boss instance, the same for every version. */
export interface BossClient {
  start(): Promise<void>;
  /** Graceful; resolves once the workers and the pool are stopped. */
  stop(): Promise<void>;
  createQueue(name: string): Promise<void>;
  subscribe(event: string, name: string): Promise<void>;
  publish(event: string, job: BossJob, db: BossDb): Promise<void>;
  send(name: string, job: BossJob, db: BossDb): Promise<void>;
  insert(name: string, jobs: BossJob[], db: BossDb): Promise<void>;
  /** Starts `workers` polling workers on the queue, each fetching up to `batchSize` jobs. */
  work(
    name: string,
    workers: number,
    batchSize: number,
    handler: (data: BenchPayload) => void,
  ): Promise<void>;
  /** Stops the queue's workers once their current batch is done. */
  offWork(name: string): Promise<void>;
}

/** One pg-boss version behind BossClient: pg-boss-10.ts and pg-boss-12.ts. */
export interface PgBossLibrary {
  /** 'pg-boss 10'. */
  name: string;
  /** Its wake-up and fetch settings, for RESULTS.md. */
  tuning: string;
  create(config: {
    url: string;
    schema: string;
    poolMax: number;
    onError: (error: Error) => void;
  }): BossClient;
}

export interface PgBossOptions {
  url: string;
  label?: string;
  schema?: string;
  /** Queues subscribed to the one event: fan-out through publish()/subscribe(). */
  queues?: number;
  workers?: number;
  batchSize?: number;
}

export function pgBossSystem(library: PgBossLibrary, options: PgBossOptions): PeerSystem {
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
  let boss: BossClient | null = null;

  const current = (): BossClient => {
    if (boss === null) throw new Error(`${library.name} system used before reset()`);
    return boss;
  };
  const stopBoss = async () => {
    const b = boss;
    boss = null;
    await b?.stop();
  };
  // pg-boss runs caller-transaction statements through any object with executeSql(). Its publish() sends to all
  // subscribed queues at once; on one client they queue anyway, and inCallOrder chains them unless the client
  // does that itself (a child's stand-in, which then needs no IPC round trip per statement).
  const inTx = (client: SqlClient): BossDb => {
    const ordered = inCallOrder(client);
    return { executeSql: (text: string, values?: unknown[]) => ordered.query(text, values) };
  };
  const job = (m: OutgoingMessage): BossJob => ({
    data: m.payload,
    ...(m.deliverAt ? { startAfter: m.deliverAt } : {}),
  });

  return {
    label: options.label ?? library.name,
    settings:
      `schema ${schema}, ${queues} queue(s)${queues > 1 ? ' subscribed to one event (publish/subscribe)' : ''}; ` +
      `${workers} worker(s) per queue, batchSize ${batchSize}, ${library.tuning}, pool max ${poolMax}; ` +
      'supervise and schedule off',
    publishPath:
      queues > 1
        ? 'boss.publish(event, data, { db }) per message (one job per subscribed queue)'
        : 'boss.send(name, data, { db }) for one message, boss.insert(jobs, { db }) for many',
    async reset() {
      await stopBoss();
      await dropSchemas(admin, schema);
      boss = library.create({
        url,
        schema,
        poolMax,
        onError: (error) => console.warn(`[bench] ${library.name} error: ${error.message}`),
      });
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
        for (const m of messages) await b.publish(EVENT, job(m), db);
        return;
      }
      const name = names[0] ?? 'bench_0';
      const first = messages[0];
      if (messages.length === 1 && first !== undefined) {
        await b.send(name, job(first), db);
        return;
      }
      await b.insert(name, messages.map(job), db);
    },
    async prepare() {
      await admin.query(`VACUUM ANALYZE ${schema}.job`);
    },
    async start(handler: DeliveryHandler) {
      const b = current();
      for (const name of names) await b.work(name, workers, batchSize, (data) => handler(data));
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
