import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { TopicFilter } from '../topics.js';

/**
 * Creates the subscription or replaces its topics and ordering; returns its id. Ordering applies to deliveries
 * the relay makes from then on. Concurrent declares of one name are safe:
 * the unique index on name serialises them and the last one's topics win.
 */
export async function upsertSubscription(
  exec: Executor,
  s: SchemaName,
  name: string,
  filter: TopicFilter,
  ordered: boolean,
): Promise<number> {
  const rows = await exec.query<{ id: number }>(
    `INSERT INTO ${s.quoted}.subscriptions (name, topics, topic_pattern, ordered)
     VALUES ($1::text, $2::text[], $3::text, $4::boolean)
     ON CONFLICT (name) DO UPDATE
       SET topics = excluded.topics,
           topic_pattern = excluded.topic_pattern,
           ordered = excluded.ordered,
           updated_at = now()
       WHERE subscriptions.topics IS DISTINCT FROM excluded.topics
          OR subscriptions.ordered IS DISTINCT FROM excluded.ordered
     RETURNING id`,
    [name, filter.topics, filter.pattern, ordered],
  );
  if (rows[0] !== undefined) return rows[0].id;
  // Unchanged: DO UPDATE ... WHERE false returns nothing, so read the id.
  const existing = await selectSubscriptionId(exec, s, name);
  if (existing === null) throw new Error(`subscription "${name}" vanished while being declared`);
  return existing;
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
