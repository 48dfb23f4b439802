-- Up Migration
-- The audit trail (issue 14): who handled a delivery and when its attempts ran, a row per failed attempt, what
-- retention removed, and the audit_* views: the public SQL contract, version 1.

-- The processes that consume: one row per Outbox instance that ran a consumer (host, pid, instance name), so that a
-- delivery names its consumer in 4 bytes.
CREATE TABLE consumers (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  host text NOT NULL,
  pid integer NOT NULL,
  instance text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (host, pid, instance)
);

-- Attempt times and the consumer of the latest attempt, written by the claim's lease UPDATE (no index holds them, so
-- they add bytes to the row and nothing else) and carried along when a delivery finishes. first_attempt_at stays
-- NULL until a second attempt (the first is then last_attempt_at's previous value): the views show
-- coalesce(first_attempt_at, last_attempt_at).
ALTER TABLE deliveries
  ADD COLUMN first_attempt_at timestamptz,
  ADD COLUMN last_attempt_at timestamptz,
  ADD COLUMN consumer_id integer;
ALTER TABLE completed_deliveries
  ADD COLUMN first_attempt_at timestamptz,
  ADD COLUMN last_attempt_at timestamptz,
  ADD COLUMN consumer_id integer;
ALTER TABLE dead_deliveries
  ADD COLUMN first_attempt_at timestamptz,
  ADD COLUMN last_attempt_at timestamptz,
  ADD COLUMN consumer_id integer;

-- One row per failed attempt: a handler error (retried or dead-lettered) or a lease that ran out (found by the next
-- claim). A delivery that succeeds at its first attempt writes nothing here. Rows name the message and the
-- subscription, not only the delivery id: a replayed ordered dead letter is queued under a new delivery id.
CREATE TABLE delivery_failures (
  message_id bigint NOT NULL,
  subscription_id integer NOT NULL,
  delivery_id bigint NOT NULL,
  attempt integer NOT NULL,
  error text,
  consumer_id integer,
  failed_at timestamptz NOT NULL DEFAULT now()
);
-- A message's history (audit_failures, the journey) and retention, which removes a message's failures with it.
CREATE INDEX delivery_failures_message_idx ON delivery_failures (message_id, subscription_id);
-- "Failures of a subscription yesterday": a time range, read block range by block range.
CREATE INDEX delivery_failures_failed_at_idx ON delivery_failures USING brin (failed_at);

-- Replay from a point in time finds its first message by publish time. BRIN: a few pages for the whole table, and
-- an insert into a block range not summarized yet (the newest ones) writes nothing to it.
CREATE INDEX messages_created_at_idx ON messages USING brin (created_at);

-- What retention has removed: removed_through is the publish time of the newest message it deleted, so a replay
-- from an earlier time can say that messages are missing instead of silently re-delivering only the rest.
CREATE TABLE retention_state (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  removed_through timestamptz,
  messages_removed bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO retention_state DEFAULT VALUES;

-- Audit contract v1. Columns are added at the end and never renamed, retyped or removed within a major version;
-- the README documents each one. The older views (message_deliveries, dead_letters, subscription_lag) stay as they
-- were.

-- One row per message.
CREATE VIEW audit_messages AS
SELECT
  m.id AS message_id,
  m.topic,
  m.key,
  m.headers,
  m.payload,
  m.dedup_key,
  m.created_at AS published_at,
  m.deliver_at,
  (m.id <= r.done_max_id AND pg_visible_in_snapshot(m.tx_id, r.done_snapshot)) AS relayed,
  least(
    (SELECT min(d.created_at) FROM deliveries d WHERE d.message_id = m.id),
    (SELECT min(c.created_at) FROM completed_deliveries c WHERE c.message_id = m.id),
    (SELECT min(x.created_at) FROM dead_deliveries x WHERE x.message_id = m.id)
  ) AS relayed_at,
  cc.cancelled_at
FROM messages m
-- LIMIT 1: relay_state holds one row, and says so to the planner, which otherwise guesses hundreds for a table
-- that was never analyzed and plans (and JIT-compiles) for them.
CROSS JOIN (SELECT * FROM relay_state LIMIT 1) r
LEFT JOIN cancellations cc ON cc.message_id = m.id;
COMMENT ON VIEW audit_messages IS 'pg-outbox audit contract v1: one row per retained message';

-- One row per message x subscription, in whichever table the delivery is now. status: pending (due, waiting for a
-- consumer), delayed (a due time ahead: deliverAt, delayMs or retry backoff), in_flight (leased to a consumer),
-- done, cancelled, dead.
CREATE VIEW audit_deliveries AS
SELECT
  d.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  d.id AS delivery_id,
  CASE WHEN d.leased_until > now() THEN 'in_flight'
       WHEN d.available_at > now() THEN 'delayed'
       ELSE 'pending'
  END AS status,
  d.attempt AS attempts,
  coalesce(d.first_attempt_at, d.last_attempt_at) AS first_attempt_at,
  d.last_attempt_at,
  NULL::timestamptz AS completed_at,
  d.last_error,
  co.host || ':' || co.pid || ':' || co.instance AS consumer,
  m.created_at AS published_at,
  d.created_at AS relayed_at,
  d.available_at AS due_at,
  d.leased_until
FROM deliveries d
JOIN subscriptions s ON s.id = d.subscription_id
LEFT JOIN messages m ON m.id = d.message_id
LEFT JOIN consumers co ON co.id = d.consumer_id
UNION ALL
SELECT
  c.message_id,
  m.topic,
  m.key,
  s.name,
  c.id,
  c.outcome,
  c.attempt,
  coalesce(c.first_attempt_at, c.last_attempt_at),
  c.last_attempt_at,
  c.completed_at,
  c.last_error,
  co.host || ':' || co.pid || ':' || co.instance,
  m.created_at,
  c.created_at,
  NULL::timestamptz,
  NULL::timestamptz
FROM completed_deliveries c
JOIN subscriptions s ON s.id = c.subscription_id
LEFT JOIN messages m ON m.id = c.message_id
LEFT JOIN consumers co ON co.id = c.consumer_id
UNION ALL
SELECT
  x.message_id,
  m.topic,
  m.key,
  s.name,
  x.id,
  'dead'::text,
  x.attempt,
  coalesce(x.first_attempt_at, x.last_attempt_at),
  x.last_attempt_at,
  x.dead_at,
  x.last_error,
  co.host || ':' || co.pid || ':' || co.instance,
  m.created_at,
  x.created_at,
  NULL::timestamptz,
  NULL::timestamptz
FROM dead_deliveries x
JOIN subscriptions s ON s.id = x.subscription_id
LEFT JOIN messages m ON m.id = x.message_id
LEFT JOIN consumers co ON co.id = x.consumer_id;
COMMENT ON VIEW audit_deliveries IS 'pg-outbox audit contract v1: one row per message x subscription';

-- One row per failed attempt, oldest first within a delivery.
CREATE VIEW audit_failures AS
SELECT
  f.message_id,
  m.topic,
  m.key,
  s.name AS subscription,
  f.delivery_id,
  f.attempt,
  f.error,
  co.host || ':' || co.pid || ':' || co.instance AS consumer,
  f.failed_at
FROM delivery_failures f
JOIN subscriptions s ON s.id = f.subscription_id
LEFT JOIN messages m ON m.id = f.message_id
LEFT JOIN consumers co ON co.id = f.consumer_id;
COMMENT ON VIEW audit_failures IS 'pg-outbox audit contract v1: one row per failed attempt';

-- The relay: committed messages not fanned out yet and the age of the oldest. The same bounded scans as the relay's
-- own (see src/sql/status.ts): its cost is the backlog's, not the history's.
CREATE VIEW audit_relay AS
SELECT
  count(w.created_at) AS backlog,
  coalesce(now() - min(w.created_at), interval '0') AS lag,
  (SELECT updated_at FROM relay_state LIMIT 1) AS updated_at
FROM (SELECT * FROM relay_state LIMIT 1) r
CROSS JOIN LATERAL (
  SELECT m.created_at
  FROM messages m
  WHERE m.id > r.done_max_id
    AND NOT pg_visible_in_snapshot(m.tx_id, r.done_snapshot)
  UNION ALL
  -- One probe of messages_tx_id_idx per transaction running at done (a "tx_id = ANY (...)" may be planned as a walk
  -- of the primary key up to done_max_id, i.e. of the whole history).
  SELECT m.created_at
  FROM pg_snapshot_xip(r.done_snapshot) AS x(xid)
  CROSS JOIN LATERAL (
    SELECT mm.created_at
    FROM messages mm
    WHERE mm.tx_id = x.xid
      AND mm.id <= r.done_max_id
  ) m
  UNION ALL
  SELECT m.created_at
  FROM messages m
  WHERE m.tx_id >= pg_snapshot_xmax(r.done_snapshot)
    AND m.tx_id < coalesce(
          CASE WHEN r.done_xid_bound_xmax = pg_snapshot_xmax(r.done_snapshot) THEN r.done_xid_bound END,
          pg_snapshot_xmax(pg_current_snapshot()))
    AND m.id <= r.done_max_id
) w;
COMMENT ON VIEW audit_relay IS 'pg-outbox audit contract v1: the relay backlog and lag, one row';

-- One row per subscription. Pending work is counted through deliveries_due_idx, dead letters through
-- dead_deliveries_subscription_idx, and done_last_hour reads only the last hour of completed_deliveries (its BRIN
-- index on completed_at): none of them grows with the history.
CREATE VIEW audit_subscriptions AS
SELECT
  sub.name AS subscription,
  sub.topics,
  sub.ordered,
  sub.block_key_on_dead,
  coalesce(p.pending, 0) AS pending,
  coalesce(p.delayed, 0) AS delayed,
  coalesce(p.in_flight, 0) AS in_flight,
  (SELECT count(*) FROM dead_deliveries x WHERE x.subscription_id = sub.id) AS dead,
  coalesce(hd.done, 0) AS done_last_hour,
  coalesce(hf.failed, 0) AS failed_last_hour,
  coalesce(now() - p.oldest_due, interval '0') AS oldest_pending_age,
  rl.backlog AS relay_backlog,
  rl.lag AS relay_lag,
  sub.created_at
FROM subscriptions sub
CROSS JOIN audit_relay rl
LEFT JOIN LATERAL (
  SELECT count(*) FILTER (WHERE d.available_at <= now()) AS pending,
         count(*) FILTER (WHERE d.available_at > now() AND (d.leased_until IS NULL OR d.leased_until <= now()))
           AS delayed,
         count(*) FILTER (WHERE d.leased_until > now()) AS in_flight,
         min(d.available_at) FILTER (WHERE d.available_at <= now()) AS oldest_due
  FROM deliveries d
  WHERE d.subscription_id = sub.id
    AND d.state = 'pending'
) p ON true
LEFT JOIN (
  SELECT c.subscription_id, count(*) FILTER (WHERE c.outcome = 'done') AS done
  FROM completed_deliveries c
  WHERE c.completed_at > now() - interval '1 hour'
  GROUP BY c.subscription_id
) hd ON hd.subscription_id = sub.id
LEFT JOIN (
  SELECT f.subscription_id, count(*) AS failed
  FROM delivery_failures f
  WHERE f.failed_at > now() - interval '1 hour'
  GROUP BY f.subscription_id
) hf ON hf.subscription_id = sub.id;
COMMENT ON VIEW audit_subscriptions IS 'pg-outbox audit contract v1: one row per subscription';

-- Down Migration
DROP VIEW IF EXISTS audit_subscriptions;
DROP VIEW IF EXISTS audit_relay;
DROP VIEW IF EXISTS audit_failures;
DROP VIEW IF EXISTS audit_deliveries;
DROP VIEW IF EXISTS audit_messages;
DROP TABLE IF EXISTS retention_state;
DROP INDEX IF EXISTS messages_created_at_idx;
DROP TABLE IF EXISTS delivery_failures;
ALTER TABLE dead_deliveries
  DROP COLUMN IF EXISTS consumer_id,
  DROP COLUMN IF EXISTS last_attempt_at,
  DROP COLUMN IF EXISTS first_attempt_at;
ALTER TABLE completed_deliveries
  DROP COLUMN IF EXISTS consumer_id,
  DROP COLUMN IF EXISTS last_attempt_at,
  DROP COLUMN IF EXISTS first_attempt_at;
ALTER TABLE deliveries
  DROP COLUMN IF EXISTS consumer_id,
  DROP COLUMN IF EXISTS last_attempt_at,
  DROP COLUMN IF EXISTS first_attempt_at;
DROP TABLE IF EXISTS consumers;
