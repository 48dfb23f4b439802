import type pg from 'pg';

/**
 * Fills pg-outbox's own tables directly with set-based INSERT … SELECT generate_series: one statement per chunk
 * writes the messages and, from their RETURNING, one delivery each. Going through publish() and the relay would
 * take an hour for 10M rows; the rows are the same shape the relay writes (pending, attempt 0, due at the
 * message's deliver_at).
 */
const CHUNK = 1_000_000;

/** Adds `count` deliveries due a day from now and later (delayed rows: waiting, not claimable). */
export async function addDelayedRows(
  pool: pg.Pool,
  schema: string,
  subscriptionId: number,
  count: number,
  onChunk: (done: number) => void,
): Promise<void> {
  for (let done = 0; done < count;) {
    const size = Math.min(CHUNK, count - done);
    await pool.query(
      `WITH m AS (
         INSERT INTO ${schema}.messages (topic, payload, deliver_at)
         SELECT 'bench.backlog', '{"waiting":true}'::jsonb,
                now() + interval '1 day' + g * interval '1 millisecond'
         FROM generate_series($1::bigint, $2::bigint) g
         RETURNING id, deliver_at
       )
       INSERT INTO ${schema}.deliveries (subscription_id, message_id, available_at)
       SELECT $3::int, id, deliver_at
       FROM m`,
      [done + 1, done + size, subscriptionId],
    );
    done += size;
    onChunk(done);
  }
}

/** Adds `count` deliveries that are due now: the work the timed claims take. */
export async function addDueRows(
  pool: pg.Pool,
  schema: string,
  subscriptionId: number,
  count: number,
): Promise<void> {
  await pool.query(
    `WITH m AS (
       INSERT INTO ${schema}.messages (topic, payload)
       SELECT 'bench.backlog', '{"due":true}'::jsonb
       FROM generate_series(1, $1::int)
       RETURNING id, created_at
     )
     INSERT INTO ${schema}.deliveries (subscription_id, message_id, available_at)
     SELECT $2::int, id, created_at - interval '1 second'
     FROM m`,
    [count, subscriptionId],
  );
}
