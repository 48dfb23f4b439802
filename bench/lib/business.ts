import type pg from 'pg';

/**
 * The caller's business row: every publishing transaction inserts one order next to its message(s), as a service
 * using an outbox would. It lives in its own schema, outside every system under test.
 */
const SCHEMA = 'bench_app';

export async function resetBusinessTable(pool: pg.Pool): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await pool.query(`CREATE SCHEMA ${SCHEMA}`);
  await pool.query(
    `CREATE TABLE ${SCHEMA}.orders (
       id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
       customer_id integer NOT NULL,
       amount_cents integer NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now()
     )`,
  );
}

export async function insertOrder(client: pg.PoolClient, n: number): Promise<void> {
  await client.query(`INSERT INTO ${SCHEMA}.orders (customer_id, amount_cents) VALUES ($1::int, $2::int)`, [
    n % 10_000,
    1999,
  ]);
}

export async function dropBusinessSchema(pool: pg.Pool): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
}
