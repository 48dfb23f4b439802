import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';

/*
 * The relay lock is a two-key advisory lock: a constant class id for pg-outbox, and the schema's oid (mapped
 * one-to-one from 0..2^32-1 onto int4). Advisory locks are per database and oids of schemas are unique in it, so
 * relays of two schemas never block each other (a hash of the name could collide). A schema that is renamed keeps
 * its lock; one dropped and created again gets a new one.
 * Who can block it: any role that can connect to the database can take any advisory lock (Postgres has no
 * privilege on them), so a session holding this key keeps every relay of the schema standing by. README
 * ("Operations") shows the query that finds the holder.
 */
const RELAY_LOCK_CLASS = 1_870_000_001;
const LOCK_KEY = `(SELECT (n.oid::bigint - 2147483648)::int FROM pg_namespace n WHERE n.nspname = $2::text)`;

/*
 * Delivery ids of one key must appear in id order (the claim's per-key rule: no earlier pending delivery of the key),
 * and two writers draw them: the relay, and replay() when it queues a dead letter anew at the end of its key. A relay
 * batch holds this transaction-level lock shared from its first statement to its commit, and such a replay takes it
 * exclusive: the replay waits for a batch in flight to commit, and the next batch draws its ids after the replay
 * committed. Keyed by the schema's oid like the relay lock.
 */
const DELIVERY_IDS_LOCK_CLASS = 1_870_000_002;

/** The select-list expression that takes the shared lock; the statement passes the schema name as `param`. */
export function shareDeliveryIdsLock(param: string): string {
  return `pg_advisory_xact_lock_shared(${DELIVERY_IDS_LOCK_CLASS}, ${LOCK_KEY.replace('$2', param)})`;
}

/** Takes the delivery-ids lock exclusive until the end of the caller's transaction (see above). */
export async function lockDeliveryIds(exec: Executor, s: SchemaName): Promise<void> {
  await exec.query(`SELECT pg_advisory_xact_lock($1::int, ${LOCK_KEY})`, [DELIVERY_IDS_LOCK_CLASS, s.name]);
}

/** Session advisory lock that makes one relay per schema active; released when its connection ends. */
export async function tryRelayLock(exec: Executor, s: SchemaName): Promise<boolean> {
  const rows = await exec.query<{ locked: boolean | null }>(
    `SELECT pg_try_advisory_lock($1::int, ${LOCK_KEY}) AS locked`,
    [RELAY_LOCK_CLASS, s.name],
  );
  return rows[0]?.locked === true;
}

export async function releaseRelayLock(exec: Executor, s: SchemaName): Promise<void> {
  await exec.query(`SELECT pg_advisory_unlock($1::int, ${LOCK_KEY})`, [RELAY_LOCK_CLASS, s.name]);
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

/**
 * Takes the delivery-ids lock shared until the end of the caller's transaction: retention's message deletes. A
 * replay from a point in time queues new deliveries for finished messages and takes the lock exclusive, so no
 * message is removed between the replay reading it and its delivery committing; the statements that follow this
 * one see every replay that committed before it.
 */
export async function shareDeliveryIds(exec: Executor, s: SchemaName): Promise<void> {
  await exec.query(`SELECT ${shareDeliveryIdsLock('$1')}`, [s.name]);
}
