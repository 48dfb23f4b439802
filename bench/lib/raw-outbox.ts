import { createOutbox } from '../../src/index.js';
import { count, createPool, dropSchemas } from './db.js';
import type { BenchPayload, DeliveryHandler, QueueSystem } from './system.js';

const TOPIC = 'bench.topic';

/**
 * The ceiling of pg-outbox's design rather than of Postgres: hand-written SQL that makes the same writes per
 * message as pg-outbox, on pg-outbox's own tables and indexes (created by migrate()), with nothing else. A relay
 * loop copies messages into deliveries by id (no snapshot bookkeeping: everything is committed before the clock
 * starts); two consumer loops each claim 500 with a lease (UPDATE of attempt, due time and lease end, the rows
 * picked with FOR UPDATE SKIP LOCKED), hand the rows to the handler, and ack them (DELETE fenced by attempt, and
 * the audit row INSERTed into completed_deliveries). No cancellation or dead-letter checks, no lease extension,
 * no retry path, no pipelining. 4 connections, like the raw ceiling. The gap between this row and the raw one is
 * what the lease and audit writes cost; the gap between this row and pg-outbox's is what the library adds.
 */
const LOOP = { consumers: 2, batch: 500, relayBatch: 5000 };

export function rawOutboxSystem(options: { url: string; schema?: string }): QueueSystem {
  const { url, schema = 'bench_raw_outbox' } = options;
  const pool = createPool(url, LOOP.consumers + 2);
  const outbox = createOutbox({ pool, schema });
  let subscriptionId = 0;
  let loops: Promise<void>[] = [];
  let running = false;

  async function relay(): Promise<void> {
    let position = '0';
    while (running) {
      const { rows } = await pool.query<{ last: string | null }>(
        `WITH inserted AS (
           INSERT INTO ${schema}.deliveries (subscription_id, message_id, key, available_at)
           SELECT s.id, m.id, m.key, m.created_at
           FROM (SELECT id, key, created_at FROM ${schema}.messages
                 WHERE id > $1::bigint ORDER BY id LIMIT $2::int) m
           CROSS JOIN ${schema}.subscriptions s
           RETURNING message_id
         )
         SELECT max(message_id)::text AS last FROM inserted`,
        [position, LOOP.relayBatch],
      );
      const last = rows[0]?.last ?? null;
      if (last === null) await new Promise((resolve) => setTimeout(resolve, 5));
      else position = last;
    }
  }

  async function consume(handler: DeliveryHandler): Promise<void> {
    while (running) {
      // FOR UPDATE SKIP LOCKED: the loops take disjoint rows; the UPDATE moves the due time to the lease end, so a
      // claimed row leaves the due range until then, as pg-outbox's claim does.
      const { rows } = await pool.query<{ id: string; attempt: number; payload: BenchPayload }>(
        `WITH claimed AS (
           UPDATE ${schema}.deliveries d
           SET attempt = d.attempt + 1,
               available_at = now() + interval '30 seconds',
               leased_until = now() + interval '30 seconds'
           WHERE d.id = ANY (ARRAY(
             SELECT q.id FROM ${schema}.deliveries q
             WHERE q.subscription_id = $2::int AND q.state = 'pending' AND q.available_at <= now()
             ORDER BY q.available_at, q.id
             LIMIT $1::int
             FOR UPDATE SKIP LOCKED
           ))
           RETURNING d.id, d.attempt, d.message_id
         )
         SELECT c.id, c.attempt, m.payload
         FROM claimed c
         LEFT JOIN LATERAL (
           SELECT mm.payload FROM ${schema}.messages mm WHERE mm.id = c.message_id LIMIT 1
         ) m ON true`,
        [LOOP.batch, subscriptionId],
      );
      if (rows.length === 0) {
        await new Promise((resolve) => setTimeout(resolve, 5));
        continue;
      }
      for (const row of rows) handler(row.payload);
      await pool.query(
        `WITH acked AS (
           DELETE FROM ${schema}.deliveries d
           USING unnest($1::bigint[], $2::int[]) AS f(id, attempt)
           WHERE d.id = ANY ($1::bigint[]) AND d.id = f.id AND d.attempt = f.attempt
           RETURNING d.id, d.subscription_id, d.message_id, d.key, d.attempt, d.last_error, d.created_at
         )
         INSERT INTO ${schema}.completed_deliveries
           (id, subscription_id, message_id, key, attempt, last_error, created_at)
         SELECT id, subscription_id, message_id, key, attempt, last_error, created_at FROM acked`,
        [rows.map((r) => r.id), rows.map((r) => r.attempt)],
      );
    }
  }

  return {
    label: "raw SQL with pg-outbox's writes",
    settings:
      `schema ${schema} made by pg-outbox's migrate(); 1 relay loop (INSERT … SELECT by id, ${LOOP.relayBatch} ` +
      `per statement) and ${LOOP.consumers} consumer loops (lease UPDATE of ${LOOP.batch} rows picked FOR UPDATE ` +
      'SKIP LOCKED, then DELETE fenced by attempt + INSERT of the audit rows); no checks, retries or pipelining',
    publishPath: 'outbox.publishMany() (the same rows as pg-outbox)',
    async reset() {
      await this.stop();
      await dropSchemas(pool, schema);
      await outbox.migrate();
      await outbox.declareSubscription('raw', { topics: [TOPIC] });
      subscriptionId = await count(pool, `SELECT id AS n FROM ${schema}.subscriptions`);
    },
    async publish(client, messages) {
      await outbox.publishMany(
        client,
        messages.map((m) => ({ topic: TOPIC, payload: m.payload })),
      );
    },
    async prepare() {
      await pool.query(`VACUUM ANALYZE ${schema}.messages`);
      await pool.query(`VACUUM ANALYZE ${schema}.deliveries`);
    },
    async start(handler) {
      running = true;
      loops = [relay(), ...Array.from({ length: LOOP.consumers }, () => consume(handler))];
      await Promise.resolve();
    },
    async stop() {
      running = false;
      await Promise.all(loops);
      loops = [];
    },
    unacked: () =>
      count(
        pool,
        `SELECT (SELECT count(*) FROM ${schema}.messages) - (SELECT count(*) FROM ${schema}.completed_deliveries) AS n`,
      ),
    async close() {
      await this.stop();
      await dropSchemas(pool, schema);
      await pool.end();
    },
  };
}
