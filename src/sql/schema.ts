import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/** Whether migrate() has created the outbox tables in this schema. */
export async function selectRelayStateExists(exec: Executor, s: SchemaName): Promise<boolean> {
  const rows = await exec.query<{ exists: boolean }>(`SELECT to_regclass($1::text) IS NOT NULL AS exists`, [
    `${s.quoted}.relay_state`,
  ]);
  return rows[0]?.exists === true;
}
