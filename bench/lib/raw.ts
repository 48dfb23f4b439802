import type pg from 'pg';
import { count, createPool, dropSchemas } from './db.js';
import type { BenchPayload, DeliveryHandler, QueueSystem } from './system.js';

/**
 * The raw-SQL ceiling: what Postgres does with no queue library in the way. Publishing is a plain INSERT into a
 * bare table (id, topic, payload); consuming is a hand-written loop on `connections` connections of
 * DELETE … WHERE id IN (SELECT … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING payload: no lease, no
 * retry, no audit row. 4 connections, as many as pg-outbox uses while draining (claims, acks, relay, LISTEN).
 */
const RAW_DRAIN = { connections: 4, batch: 1000 };

export function rawSystem(options: { url: string; schema?: string }): QueueSystem {
  const { url, schema = 'bench_raw' } = options;
  const pool = createPool(url, RAW_DRAIN.connections + 1);
  let loops: Promise<void>[] = [];
  let running = false;

  async function consume(handler: DeliveryHandler): Promise<void> {
    while (running) {
      // SKIP LOCKED: the loops take disjoint batches without waiting on each other; a row another loop has locked
      // is being deleted by it. The LIMIT reads the primary key in order, so no other index is needed.
      const { rows } = await pool.query<{ payload: BenchPayload }>(
        `DELETE FROM ${schema}.queue
         WHERE id IN (
           SELECT id FROM ${schema}.queue ORDER BY id LIMIT $1::int FOR UPDATE SKIP LOCKED
         )
         RETURNING payload`,
        [RAW_DRAIN.batch],
      );
      for (const row of rows) handler(row.payload);
      // An empty queue: poll again shortly (the ceiling needs no wake-up machinery).
      if (rows.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  return {
    label: 'raw SQL',
    settings:
      `schema ${schema}; ${RAW_DRAIN.connections} connections looping DELETE … WHERE id IN (SELECT … LIMIT ` +
      `${RAW_DRAIN.batch} FOR UPDATE SKIP LOCKED) RETURNING`,
    publishPath: 'INSERT into a bare table (id, topic, payload); INSERT … SELECT unnest for many',
    async reset() {
      await this.stop();
      await dropSchemas(pool, schema);
      await pool.query(`CREATE SCHEMA ${schema}`);
      await pool.query(
        `CREATE TABLE ${schema}.queue (
           id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           topic text NOT NULL,
           payload jsonb NOT NULL
         )`,
      );
    },
    async publish(client: pg.PoolClient, messages) {
      const first = messages[0];
      if (messages.length === 1 && first !== undefined) {
        await client.query(`INSERT INTO ${schema}.queue (topic, payload) VALUES ($1::text, $2::jsonb)`, [
          'bench.topic',
          first.payload,
        ]);
        return;
      }
      await client.query(
        `INSERT INTO ${schema}.queue (topic, payload) SELECT $1::text, p FROM unnest($2::jsonb[]) AS p`,
        ['bench.topic', messages.map((m) => JSON.stringify(m.payload))],
      );
    },
    async prepare() {
      await pool.query(`VACUUM ANALYZE ${schema}.queue`);
    },
    async start(handler) {
      running = true;
      loops = Array.from({ length: RAW_DRAIN.connections }, () => consume(handler));
      await Promise.resolve();
    },
    async stop() {
      running = false;
      await Promise.all(loops);
      loops = [];
    },
    unacked: () => count(pool, `SELECT count(*) AS n FROM ${schema}.queue`),
    async close() {
      await this.stop();
      await dropSchemas(pool, schema);
      await pool.end();
    },
  };
}
