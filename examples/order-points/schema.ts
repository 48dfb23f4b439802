import type pg from 'pg';

/** The outbox's own schema for this example, so it never touches another app's `outbox`. */
export const OUTBOX_SCHEMA = 'shop_outbox';

/**
 * The shop's business tables, in a schema of their own. `points` and `notifications_sent` have no unique key on
 * the order on purpose: a duplicate that got through would show as a second row, not as a constraint error.
 */
const SHOP_TABLES = `
  CREATE SCHEMA shop;
  CREATE TABLE shop.orders (
    id               int PRIMARY KEY,
    customer         text NOT NULL,
    amount           int NOT NULL,
    status           text NOT NULL CHECK (status IN ('unpaid', 'paid', 'cancelled')),
    close_message_id bigint NOT NULL,
    paid_at          timestamptz
  );
  CREATE TABLE shop.points (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   int NOT NULL REFERENCES shop.orders (id),
    customer   text NOT NULL,
    points     int NOT NULL
  );
  CREATE TABLE shop.notifications_sent (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   int NOT NULL REFERENCES shop.orders (id),
    customer   text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
  );
`;

/** Drops what an earlier run left and creates everything fresh, so the example can run again and again. */
export async function resetSchema(pool: pg.Pool): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS shop, ${OUTBOX_SCHEMA} CASCADE`);
  await pool.query(SHOP_TABLES);
}
