-- Up Migration
-- pg-outbox core tables. node-pg-migrate runs this file with search_path set to the configured schema, so every
-- name below lands in that schema. A released migration is never edited: changes go into a new file.

-- The append-only message log. Producers insert; nothing updates a row. tx_id is the inserting transaction's
-- top-level id: the relay uses it with pg_snapshot values to find committed rows without skipping late commits.
CREATE TABLE messages (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
  topic text NOT NULL,
  key text,
  payload jsonb NOT NULL,
  headers jsonb NOT NULL DEFAULT '{}'::jsonb,
  deliver_at timestamptz,
  dedup_key text,
  created_at timestamptz NOT NULL DEFAULT now()
);
-- The relay reads by (tx_id, id): equality probes for the transactions that were running at its last snapshot,
-- and one ordered range scan for the transactions that started after it.
CREATE INDEX messages_tx_id_idx ON messages (tx_id, id);
-- Producer dedup: one message per (topic, dedup_key) while the message is retained.
CREATE UNIQUE INDEX messages_dedup_idx ON messages (topic, dedup_key) WHERE dedup_key IS NOT NULL;

-- A subscription is a consumer group. topics holds exact names and patterns; topic_pattern is the anchored regular
-- expression compiled from the patterns (NULL when every entry is an exact name).
CREATE TABLE subscriptions (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL UNIQUE,
  topics text[] NOT NULL,
  topic_pattern text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Live deliveries: one row per message x subscription until it is acked. state is 'pending' until the delivery is
-- dead-lettered ('dead') or cancelled ('cancelled'); an ack moves the row to completed_deliveries, so this table
-- holds only the work that is not finished and stays small however long the history grows. available_at is the
-- due time: delivery time, retry backoff and lease expiry all move it. attempt counts hand-outs and is the fencing
-- token every ack must present.
CREATE TABLE deliveries (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  subscription_id integer NOT NULL,
  message_id bigint NOT NULL,
  key text,
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead', 'cancelled')),
  attempt integer NOT NULL DEFAULT 0,
  available_at timestamptz NOT NULL,
  leased_until timestamptz,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz
) WITH (fillfactor = 90);
-- The claim index: pending rows only, in due order, per subscription.
CREATE INDEX deliveries_due_idx ON deliveries (subscription_id, available_at, id) WHERE state = 'pending';
-- One live delivery per message and subscription, and "where did message X go" for audits and cancel().
CREATE UNIQUE INDEX deliveries_message_idx ON deliveries (message_id, subscription_id);
CREATE INDEX deliveries_dead_idx ON deliveries (subscription_id, id) WHERE state = 'dead';

-- Acked deliveries, append-only: the audit trail of what was handled, when, after how many attempts.
CREATE TABLE completed_deliveries (
  id bigint NOT NULL,
  subscription_id integer NOT NULL,
  message_id bigint NOT NULL,
  key text,
  attempt integer NOT NULL,
  last_error text,
  created_at timestamptz NOT NULL,
  completed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX completed_deliveries_message_idx ON completed_deliveries (message_id);
CREATE INDEX completed_deliveries_completed_at_idx ON completed_deliveries USING brin (completed_at);

-- Messages cancelled by outbox.cancel(): the relay does not fan them out and a claim drops their deliveries.
CREATE TABLE cancellations (
  message_id bigint PRIMARY KEY,
  cancelled_at timestamptz NOT NULL DEFAULT now()
);

-- Idempotency keys for the strong "done once" check.
CREATE TABLE processed (
  scope text NOT NULL,
  key text NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (scope, key)
);

-- The relay's position, a single row. Every message visible in done_snapshot has been fanned out. While a large
-- window is worked through in several batches, target_snapshot is its upper end and position_* the last message
-- relayed inside it. version guards against two relays writing at once.
CREATE TABLE relay_state (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  done_snapshot pg_snapshot NOT NULL,
  target_snapshot pg_snapshot,
  position_tx xid8,
  position_id bigint,
  version bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO relay_state (done_snapshot) VALUES (pg_current_snapshot());

-- Audit views: stable names and columns that the README documents.
CREATE VIEW message_deliveries AS
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

CREATE VIEW dead_letters AS
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

CREATE VIEW subscription_lag AS
SELECT
  s.name AS subscription,
  count(*) FILTER (WHERE d.available_at <= now()) AS ready,
  count(*) FILTER (WHERE d.available_at > now() AND d.leased_until IS NULL) AS scheduled,
  count(*) FILTER (WHERE d.leased_until > now()) AS in_flight,
  now() - min(d.available_at) FILTER (WHERE d.available_at <= now()) AS oldest_ready_age
FROM subscriptions s
LEFT JOIN deliveries d ON d.subscription_id = s.id AND d.state = 'pending'
GROUP BY s.name;

-- Down Migration
DROP VIEW IF EXISTS subscription_lag;
DROP VIEW IF EXISTS dead_letters;
DROP VIEW IF EXISTS message_deliveries;
DROP TABLE IF EXISTS relay_state;
DROP TABLE IF EXISTS processed;
DROP TABLE IF EXISTS cancellations;
DROP TABLE IF EXISTS completed_deliveries;
DROP TABLE IF EXISTS deliveries;
DROP TABLE IF EXISTS subscriptions;
DROP TABLE IF EXISTS messages;
