-- Up Migration
-- Hardening of the core (issue 13): the relay walks its window in id order and knows which cluster it runs in,
-- tx_id cannot be forged, dead and cancelled deliveries leave the hot table, and a subscription stores whether
-- dead letters block their key.

-- The relay's window (done_snapshot, target_snapshot] is now relayed in message id order (a message that
-- committed before another was inserted has the lower id, so per-key order follows causality), with window_after_id
-- the last id relayed inside an open window. See src/sql/relay.ts for how done_max_id, done_xid_bound and
-- target_max_id bound its scans. done_xid_bound is only trusted while done_xid_bound_xmax matches done_snapshot's
-- xmax; NULL (as after this migration) makes the relay probe every xid from done's xmax up to the target's, which is
-- correct for any done_max_id, so the highest message id that has a delivery serves as one. A window left open by
-- an earlier version keeps position_tx/position_id, which the relay honours until that window closes; its
-- target_max_id stays NULL (no upper bound).
-- system_identifier is the cluster the position belongs to: snapshots and xids mean nothing in another cluster
-- (pg_dump/restore, a logical-replication cut-over), and the relay refuses to run when it changed.
ALTER TABLE relay_state
  ADD COLUMN done_max_id bigint NOT NULL DEFAULT 0,
  ADD COLUMN target_max_id bigint,
  ADD COLUMN window_after_id bigint NOT NULL DEFAULT 0,
  ADD COLUMN done_xid_bound xid8,
  ADD COLUMN done_xid_bound_xmax xid8,
  ADD COLUMN system_identifier bigint;
UPDATE relay_state
SET done_max_id = greatest(
      coalesce((SELECT max(message_id) FROM deliveries), 0),
      coalesce((SELECT max(message_id) FROM completed_deliveries), 0)),
    system_identifier = (SELECT system_identifier FROM pg_control_system());

-- A message's transaction id is taken before its id: the identity default (id) is computed before tx_id's, so the
-- first message of a transaction could otherwise draw its id before the transaction has an xid, and a relay
-- snapshot taken in between would see an xid "from after the snapshot" on a message whose id is from before it.
-- The relay's scans rely on "xid assigned after a snapshot => id above every id visible in it". A statement-level
-- trigger's WHEN clause runs before any row of the statement is formed: evaluating pg_current_xact_id() there
-- assigns the xid, and the clause is false, so the function never runs (no cost beyond that call per statement).
CREATE FUNCTION messages_xid_first() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
  RETURN NULL;
END
$$;
CREATE TRIGGER messages_xid_first
BEFORE INSERT ON messages
FOR EACH STATEMENT
WHEN (pg_current_xact_id() IS NULL)
EXECUTE FUNCTION messages_xid_first();

-- tx_id is the relay's cursor: a row that names another value may count as relayed before it was. Whoever
-- inserts, the column holds the inserting transaction's id. The WHEN clause is evaluated without calling the
-- function, so a normal insert (which takes the default) pays one comparison. pg_dump creates triggers after it has
-- loaded the data, so restored rows keep the tx_id of the old cluster; after a restore the relay refuses to run until
-- its position is reset (resetRelay), which goes by deliveries, not by tx_id.
CREATE FUNCTION messages_set_tx_id() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
  NEW.tx_id := pg_current_xact_id();
  RETURN NEW;
END
$$;
CREATE TRIGGER messages_tx_id
BEFORE INSERT ON messages
FOR EACH ROW
WHEN (NEW.tx_id IS DISTINCT FROM pg_current_xact_id())
EXECUTE FUNCTION messages_set_tx_id();

-- Dead letters leave the hot table: deliveries holds only work that is pending (due, delayed, leased or retrying).
-- A dead letter keeps its delivery id; replay() moves it back.
CREATE TABLE dead_deliveries (
  id bigint PRIMARY KEY,
  subscription_id integer NOT NULL,
  message_id bigint NOT NULL,
  key text,
  ordered_key text,
  attempt integer NOT NULL,
  last_error text,
  created_at timestamptz NOT NULL,
  dead_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_deliveries_subscription_idx ON dead_deliveries (subscription_id, id);
CREATE INDEX dead_deliveries_message_idx ON dead_deliveries (message_id);
-- blockKeyOnDead: "does an earlier delivery of this key lie dead?", one probe per claimed candidate.
CREATE INDEX dead_deliveries_ordered_key_idx ON dead_deliveries (subscription_id, ordered_key, id)
  WHERE ordered_key IS NOT NULL;
-- Retention of dead letters, oldest first.
CREATE INDEX dead_deliveries_dead_at_idx ON dead_deliveries (dead_at);
-- deliveries holds no dead rows any more.
DROP INDEX deliveries_dead_idx;

-- Cancelled deliveries are finished too: they join the acked ones, told apart by outcome ('done' or 'cancelled').
ALTER TABLE completed_deliveries ADD COLUMN outcome text NOT NULL DEFAULT 'done';

WITH moved AS (
  DELETE FROM deliveries
  WHERE state = 'dead'
  RETURNING id, subscription_id, message_id, key, ordered_key, attempt, last_error, created_at, completed_at
)
INSERT INTO dead_deliveries (id, subscription_id, message_id, key, ordered_key, attempt, last_error, created_at, dead_at)
SELECT id, subscription_id, message_id, key, ordered_key, attempt, last_error, created_at, coalesce(completed_at, now())
FROM moved;
WITH moved AS (
  DELETE FROM deliveries
  WHERE state = 'cancelled'
  RETURNING id, subscription_id, message_id, key, attempt, last_error, created_at, completed_at
)
INSERT INTO completed_deliveries (id, subscription_id, message_id, key, attempt, last_error, created_at, completed_at, outcome)
SELECT id, subscription_id, message_id, key, attempt, last_error, created_at, coalesce(completed_at, now()), 'cancelled'
FROM moved;

-- Whether a dead letter blocks the deliveries of its key that come after it (ordered subscriptions). Stored with
-- the subscription, so every consumer, and replay(), agree on it.
ALTER TABLE subscriptions ADD COLUMN block_key_on_dead boolean NOT NULL DEFAULT false;

-- The audit views read the new tables; names, columns and their order are unchanged.
CREATE OR REPLACE VIEW message_deliveries AS
SELECT
  d.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  d.id AS delivery_id,
  'pending'::text AS state,
  d.attempt,
  d.last_error,
  d.available_at,
  d.leased_until,
  m.created_at AS published_at,
  d.created_at AS relayed_at,
  NULL::timestamptz AS completed_at
FROM deliveries d
JOIN subscriptions s ON s.id = d.subscription_id
LEFT JOIN messages m ON m.id = d.message_id
UNION ALL
SELECT
  c.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  c.id AS delivery_id,
  c.outcome AS state,
  c.attempt,
  c.last_error,
  NULL::timestamptz AS available_at,
  NULL::timestamptz AS leased_until,
  m.created_at AS published_at,
  c.created_at AS relayed_at,
  c.completed_at
FROM completed_deliveries c
JOIN subscriptions s ON s.id = c.subscription_id
LEFT JOIN messages m ON m.id = c.message_id
UNION ALL
SELECT
  x.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  x.id AS delivery_id,
  'dead'::text AS state,
  x.attempt,
  x.last_error,
  NULL::timestamptz AS available_at,
  NULL::timestamptz AS leased_until,
  m.created_at AS published_at,
  x.created_at AS relayed_at,
  x.dead_at AS completed_at
FROM dead_deliveries x
JOIN subscriptions s ON s.id = x.subscription_id
LEFT JOIN messages m ON m.id = x.message_id;

CREATE OR REPLACE VIEW dead_letters AS
SELECT
  s.name AS subscription,
  x.id AS delivery_id,
  x.message_id,
  m.topic,
  m.key,
  m.payload,
  m.headers,
  x.attempt,
  x.last_error,
  m.created_at AS published_at,
  x.dead_at
FROM dead_deliveries x
JOIN subscriptions s ON s.id = x.subscription_id
LEFT JOIN messages m ON m.id = x.message_id;

-- Down Migration
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM relay_state WHERE target_snapshot IS NOT NULL) THEN
    RAISE EXCEPTION 'the relay has a window open that the previous version cannot resume: let the relay catch up '
      '(relay_state.target_snapshot IS NULL), stop it, then migrate down';
  END IF;
END
$$;
CREATE INDEX IF NOT EXISTS deliveries_dead_idx ON deliveries (subscription_id, id) WHERE state = 'dead';
CREATE OR REPLACE VIEW dead_letters AS
SELECT
  s.name AS subscription,
  d.id AS delivery_id,
  d.message_id,
  m.topic,
  m.key,
  m.payload,
  m.headers,
  d.attempt,
  d.last_error,
  m.created_at AS published_at,
  d.completed_at AS dead_at
FROM deliveries d
JOIN subscriptions s ON s.id = d.subscription_id
LEFT JOIN messages m ON m.id = d.message_id
WHERE d.state = 'dead';
CREATE OR REPLACE VIEW message_deliveries AS
SELECT
  d.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  d.id AS delivery_id,
  d.state,
  d.attempt,
  d.last_error,
  d.available_at,
  d.leased_until,
  m.created_at AS published_at,
  d.created_at AS relayed_at,
  d.completed_at
FROM deliveries d
JOIN subscriptions s ON s.id = d.subscription_id
LEFT JOIN messages m ON m.id = d.message_id
UNION ALL
SELECT
  c.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  c.id AS delivery_id,
  'done' AS state,
  c.attempt,
  c.last_error,
  NULL::timestamptz AS available_at,
  NULL::timestamptz AS leased_until,
  m.created_at AS published_at,
  c.created_at AS relayed_at,
  c.completed_at
FROM completed_deliveries c
JOIN subscriptions s ON s.id = c.subscription_id
LEFT JOIN messages m ON m.id = c.message_id;
INSERT INTO deliveries (id, subscription_id, message_id, key, ordered_key, state, attempt, available_at, last_error, created_at, completed_at)
OVERRIDING SYSTEM VALUE
SELECT id, subscription_id, message_id, key, ordered_key, 'dead', attempt, dead_at, last_error, created_at, dead_at
FROM dead_deliveries;
WITH moved AS (
  DELETE FROM completed_deliveries
  WHERE outcome = 'cancelled'
  RETURNING id, subscription_id, message_id, key, attempt, last_error, created_at, completed_at
)
INSERT INTO deliveries (id, subscription_id, message_id, key, state, attempt, available_at, last_error, created_at, completed_at)
OVERRIDING SYSTEM VALUE
SELECT id, subscription_id, message_id, key, 'cancelled', attempt, completed_at, last_error, created_at, completed_at
FROM moved;
ALTER TABLE subscriptions DROP COLUMN IF EXISTS block_key_on_dead;
ALTER TABLE completed_deliveries DROP COLUMN IF EXISTS outcome;
DROP TABLE IF EXISTS dead_deliveries;
DROP TRIGGER IF EXISTS messages_tx_id ON messages;
DROP FUNCTION IF EXISTS messages_set_tx_id();
DROP TRIGGER IF EXISTS messages_xid_first ON messages;
DROP FUNCTION IF EXISTS messages_xid_first();
ALTER TABLE relay_state
  DROP COLUMN IF EXISTS system_identifier,
  DROP COLUMN IF EXISTS window_after_id,
  DROP COLUMN IF EXISTS done_xid_bound,
  DROP COLUMN IF EXISTS done_xid_bound_xmax,
  DROP COLUMN IF EXISTS target_max_id,
  DROP COLUMN IF EXISTS done_max_id;
