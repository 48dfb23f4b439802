import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { StoredRateLimit } from '../flow-options.js';
import type { TopicFilter } from '../topics.js';

/** The settings a subscription stores; every consumer of it runs with them. */
export interface SubscriptionSettings {
  ordered: boolean;
  blockKeyOnDead: boolean;
  /** null: no rate limit. */
  rateLimit: StoredRateLimit | null;
  /** null: no limit on the deliveries of one key in flight. */
  keyConcurrency: number | null;
}

interface SettingsRow {
  ordered: boolean;
  block_key_on_dead: boolean;
  rate_limit: number | null;
  rate_burst: number | null;
  key_concurrency: number | null;
}

const SETTINGS_COLUMNS = 'ordered, block_key_on_dead, rate_limit, rate_burst, key_concurrency';

function settingsOf(row: SettingsRow): SubscriptionSettings {
  return {
    ordered: row.ordered,
    blockKeyOnDead: row.block_key_on_dead,
    rateLimit:
      row.rate_limit === null
        ? null
        : { perSecond: row.rate_limit, burst: row.rate_burst ?? Math.max(1, row.rate_limit / 10) },
    keyConcurrency: row.key_concurrency,
  };
}

function settingsParams(settings: SubscriptionSettings): unknown[] {
  return [
    settings.ordered,
    settings.blockKeyOnDead,
    settings.rateLimit?.perSecond ?? null,
    settings.rateLimit?.burst ?? null,
    settings.keyConcurrency,
  ];
}

export interface StoredSubscription extends SubscriptionSettings {
  id: number;
  topics: string[];
}

/*
 * A declaration reads the stored row, decides in Node what changes (options a declaration omits keep their stored
 * value; a consumer's options must match the stored ones), and writes, in one READ COMMITTED transaction:
 * lockSubscription's FOR UPDATE keeps a concurrent declaration of the same name from changing the row between
 * the read and the write. When the row does not exist yet, insertSubscription's ON CONFLICT waits for a
 * concurrent insert of the same name; if that one commits, the next statement's snapshot sees it and the
 * declaration locks and reads it like any other.
 */

/** Makes the declaration's transaction READ COMMITTED whatever the server's default: see above. */
export async function setReadCommitted(exec: Executor): Promise<void> {
  await exec.query('SET TRANSACTION ISOLATION LEVEL READ COMMITTED');
}

/** Reads a subscription and locks its row until the transaction ends; null when it does not exist. */
export async function lockSubscription(
  exec: Executor,
  s: SchemaName,
  name: string,
): Promise<StoredSubscription | null> {
  const rows = await exec.query<SettingsRow & { id: number; topics: string[] }>(
    `SELECT id, topics, ${SETTINGS_COLUMNS}
     FROM ${s.quoted}.subscriptions
     WHERE name = $1::text
     FOR UPDATE`,
    [name],
  );
  const row = rows[0];
  if (row === undefined) return null;
  return { id: row.id, topics: row.topics, ...settingsOf(row) };
}

/** The stored settings of a subscription by id; null when it no longer exists. */
export async function selectSettings(
  exec: Executor,
  s: SchemaName,
  id: number,
): Promise<SubscriptionSettings | null> {
  const rows = await exec.query<SettingsRow>(
    `SELECT ${SETTINGS_COLUMNS} FROM ${s.quoted}.subscriptions WHERE id = $1::int`,
    [id],
  );
  return rows[0] === undefined ? null : settingsOf(rows[0]);
}

/** Creates a subscription; returns its id, or null when a concurrent declaration created it first. */
export async function insertSubscription(
  exec: Executor,
  s: SchemaName,
  name: string,
  filter: TopicFilter,
  settings: SubscriptionSettings,
): Promise<number | null> {
  const rows = await exec.query<{ id: number }>(
    `INSERT INTO ${s.quoted}.subscriptions (name, topics, topic_pattern, ${SETTINGS_COLUMNS})
     VALUES ($1::text, $2::text[], $3::text, $4::boolean, $5::boolean, $6::float8, $7::float8, $8::int)
     ON CONFLICT (name) DO NOTHING
     RETURNING id`,
    [name, filter.topics, filter.pattern, ...settingsParams(settings)],
  );
  const id = rows[0]?.id ?? null;
  if (id !== null && settings.rateLimit !== null) await fillRateBucket(exec, s, id, settings.rateLimit);
  return id;
}

/** A rate-limited subscription's token bucket, full; one that exists keeps its tokens (capped at the burst). */
async function fillRateBucket(
  exec: Executor,
  s: SchemaName,
  id: number,
  limit: StoredRateLimit,
): Promise<void> {
  await exec.query(
    `INSERT INTO ${s.quoted}.rate_buckets (subscription_id, tokens)
     VALUES ($1::int, $2::float8)
     ON CONFLICT (subscription_id) DO UPDATE SET tokens = least(rate_buckets.tokens, excluded.tokens)`,
    [id, limit.burst],
  );
}

/** Replaces a subscription's topics and settings. Ordering applies to deliveries the relay makes from then on. */
export async function updateSubscription(
  exec: Executor,
  s: SchemaName,
  id: number,
  filter: TopicFilter,
  settings: SubscriptionSettings,
): Promise<void> {
  await exec.query(
    `UPDATE ${s.quoted}.subscriptions
     SET topics = $2::text[],
         topic_pattern = $3::text,
         ordered = $4::boolean,
         block_key_on_dead = $5::boolean,
         rate_limit = $6::float8,
         rate_burst = $7::float8,
         key_concurrency = $8::int,
         updated_at = now()
     WHERE id = $1::int`,
    [id, filter.topics, filter.pattern, ...settingsParams(settings)],
  );
  if (settings.rateLimit !== null) await fillRateBucket(exec, s, id, settings.rateLimit);
}

export async function selectSubscriptionId(
  exec: Executor,
  s: SchemaName,
  name: string,
): Promise<number | null> {
  const rows = await exec.query<{ id: number }>(
    `SELECT id FROM ${s.quoted}.subscriptions WHERE name = $1::text`,
    [name],
  );
  return rows[0]?.id ?? null;
}
