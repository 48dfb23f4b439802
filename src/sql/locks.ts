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

/**
 * Server-side limits for the relay's session, so that Postgres itself ends a session whose client went silent (a
 * dead network path, a frozen process) and frees the relay lock for a standby: idle inside a transaction for
 * idleInTransactionMs, or idle between statements for idleMs (PostgreSQL 14+; on 13 only the first applies).
 * statementMs cancels a statement the client has stopped waiting for, instead of letting it run on under the lock.
 */
export async function limitRelaySession(
  exec: Executor,
  p: { idleInTransactionMs: number; idleMs: number; statementMs: number },
): Promise<void> {
  await exec.query(
    `SELECT set_config('idle_in_transaction_session_timeout', $1::int::text, false),
            set_config('statement_timeout', $3::int::text, false),
            CASE WHEN current_setting('server_version_num')::int >= 140000
                 THEN set_config('idle_session_timeout', $2::int::text, false)
            END`,
    [p.idleInTransactionMs, p.idleMs, p.statementMs],
  );
}
