-- Up Migration
-- Flow control (issue 16): a rate limit per subscription that holds across all its consumers' processes, and a limit
-- on the deliveries of one key in flight at once, for unordered subscriptions.

-- Stored settings, shared by every consumer of the subscription (NULL: no limit).
ALTER TABLE subscriptions
  ADD COLUMN rate_limit double precision CHECK (rate_limit > 0),
  ADD COLUMN rate_burst double precision CHECK (rate_burst >= 1),
  ADD COLUMN key_concurrency integer CHECK (key_concurrency > 0);

-- The token bucket of a rate-limited subscription: tokens left at refilled_at. Every claim of every consumer takes
-- its tokens here first (one short UPDATE of this row), so the rate holds however many processes claim.
CREATE TABLE rate_buckets (
  subscription_id integer PRIMARY KEY REFERENCES subscriptions (id) ON DELETE CASCADE,
  tokens double precision NOT NULL,
  refilled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The key of a delivery that a key-limited subscription's claim leased: written by that claim's lease UPDATE only,
-- so the rows of other subscriptions never enter the index, and counting a key's deliveries in flight reads its
-- leased rows, not its backlog.
ALTER TABLE deliveries ADD COLUMN limited_key text;
CREATE INDEX deliveries_limited_key_idx ON deliveries (subscription_id, limited_key)
  WHERE limited_key IS NOT NULL;

-- Down Migration
DROP INDEX IF EXISTS deliveries_limited_key_idx;
ALTER TABLE deliveries DROP COLUMN IF EXISTS limited_key;
DROP TABLE IF EXISTS rate_buckets;
ALTER TABLE subscriptions
  DROP COLUMN IF EXISTS key_concurrency,
  DROP COLUMN IF EXISTS rate_burst,
  DROP COLUMN IF EXISTS rate_limit;
