import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { TopicFilter } from '../topics.js';

/** The settings a subscription stores; every consumer of it runs with them. */
export interface SubscriptionSettings {
  ordered: boolean;
  blockKeyOnDead: boolean;
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
  const rows = await exec.query<{
    id: number;
    topics: string[];
    ordered: boolean;
    block_key_on_dead: boolean;
  }>(
    `SELECT id, topics, ordered, block_key_on_dead
     FROM ${s.quoted}.subscriptions
     WHERE name = $1::text
     FOR UPDATE`,
    [name],
  );
  const row = rows[0];
  if (row === undefined) return null;
  return { id: row.id, topics: row.topics, ordered: row.ordered, blockKeyOnDead: row.block_key_on_dead };
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
    `INSERT INTO ${s.quoted}.subscriptions (name, topics, topic_pattern, ordered, block_key_on_dead)
     VALUES ($1::text, $2::text[], $3::text, $4::boolean, $5::boolean)
     ON CONFLICT (name) DO NOTHING
     RETURNING id`,
    [name, filter.topics, filter.pattern, settings.ordered, settings.blockKeyOnDead],
  );
  return rows[0]?.id ?? null;
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
         updated_at = now()
     WHERE id = $1::int`,
    [id, filter.topics, filter.pattern, settings.ordered, settings.blockKeyOnDead],
  );
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
