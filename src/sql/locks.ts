import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

// Two-key advisory locks: a constant class id for pg-outbox and hashtext(schema), so relays of different schemas
// do not block each other.
const RELAY_LOCK_CLASS = 1_870_000_001;

/** Session advisory lock that makes one relay per schema active; released when its connection ends. */
export async function tryRelayLock(exec: Executor, s: SchemaName): Promise<boolean> {
  const rows = await exec.query<{ locked: boolean }>(
    `SELECT pg_try_advisory_lock($1::int, hashtext($2::text)) AS locked`,
    [RELAY_LOCK_CLASS, s.name],
  );
  return rows[0]?.locked === true;
}

export async function releaseRelayLock(exec: Executor, s: SchemaName): Promise<void> {
  await exec.query(`SELECT pg_advisory_unlock($1::int, hashtext($2::text))`, [RELAY_LOCK_CLASS, s.name]);
}
