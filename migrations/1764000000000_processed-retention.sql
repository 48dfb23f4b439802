-- Up Migration
-- Retention of idempotency keys: the cleanup deletes the oldest keys first, in bounded batches, through this index.
CREATE INDEX processed_recorded_at_idx ON processed (recorded_at);

-- Down Migration
DROP INDEX IF EXISTS processed_recorded_at_idx;
