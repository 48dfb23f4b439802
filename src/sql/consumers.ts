import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

export interface ConsumerIdentity {
  host: string;
  pid: number;
  instance: string;
}

/**
 * The number this process's consumers record with each attempt (deliveries.consumer_id), registered once per
 * Outbox. The same identity registered again (a restart that reuses the pid and the instance name) gets its row
 * back; the DO UPDATE makes RETURNING return it.
 */
export async function registerConsumer(
  exec: Executor,
  s: SchemaName,
  who: ConsumerIdentity,
): Promise<number> {
  const rows = await exec.query<{ id: number }>(
    `INSERT INTO ${s.quoted}.consumers (host, pid, instance)
     VALUES ($1::text, $2::int, $3::text)
     ON CONFLICT (host, pid, instance) DO UPDATE SET started_at = now()
     RETURNING id`,
    [who.host, who.pid, who.instance],
  );
  const id = rows[0]?.id;
  if (id === undefined) throw new Error('registering the consumer returned no row');
  return id;
}
