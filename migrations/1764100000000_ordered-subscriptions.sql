-- Up Migration
-- Ordered subscriptions: deliveries that share a key are handled one at a time, in relay order.
ALTER TABLE subscriptions ADD COLUMN ordered boolean NOT NULL DEFAULT false;
-- The relay copies the message key here only for ordered subscriptions, so unordered ones pay no index entry.
ALTER TABLE deliveries ADD COLUMN ordered_key text;
-- "Is an earlier delivery of this key still unfinished?": one probe per claimed candidate.
CREATE INDEX deliveries_ordered_key_idx ON deliveries (subscription_id, ordered_key, id)
  WHERE ordered_key IS NOT NULL;

-- Down Migration
DROP INDEX IF EXISTS deliveries_ordered_key_idx;
ALTER TABLE deliveries DROP COLUMN IF EXISTS ordered_key;
ALTER TABLE subscriptions DROP COLUMN IF EXISTS ordered;
