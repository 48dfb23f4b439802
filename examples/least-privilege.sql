-- Least privilege for pg-outbox: migrations run as the schema's owner, the service runs as a role that cannot
-- run DDL and holds only the table privileges its statements need.
--
-- Run it as the owner of the outbox schema (the role that ran `pg-outbox migrate`), or as a superuser, after
-- migrating, in the database that holds the schema:
--
--   psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 \
--     -v schema=outbox -v app_role=outbox_app -v app_password='change me' -v audit_role=outbox_audit \
--     -f examples/least-privilege.sql
--
-- Placeholders are psql variables: :"schema", :"app_role", :"audit_role" (identifiers), :'app_password' (a
-- literal), and :"DBNAME" (set by psql to the current database). Without psql, replace them by hand.
--
-- The service then connects as the app role:
--
--   const pool = new pg.Pool({ connectionString: 'postgres://outbox_app:...@host/db' });
--   const outbox = createOutbox({ pool, schema: 'outbox' }); // never call outbox.migrate() with this pool
--
-- Re-run it after every upgrade that adds a migration (without the CREATE ROLE statements, once the roles
-- exist): a new table starts with no privileges for the app role, and a new feature may need a privilege listed
-- nowhere below yet (retention of messages, for example, needed DELETE on messages). Every
-- statement after the CREATE ROLEs is idempotent, and the REVOKEs make the result exact when a role held more.
--
-- Deliberately not used: ALTER DEFAULT PRIVILEGES. It would give every future table one fixed set of
-- privileges, while each table here needs a different one (nothing updates a message or a finished delivery).
-- Granting per table after each migration keeps the set minimal.

BEGIN;

-- 1. Roles. Delete these statements when the roles exist already.

-- The service's login. NOSUPERUSER, NOCREATEDB, NOCREATEROLE, NOREPLICATION and NOBYPASSRLS are the defaults,
-- spelled out.
CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
-- Optional: a read-only role for audits and dashboards; grant it to people (GRANT outbox_audit TO alice).
-- Delete it, and its grants at the end, when you need no such role.
CREATE ROLE :"audit_role" NOLOGIN;

-- 2. Privileges of the service role.

-- No DDL. CONNECT is all the service needs on the database (PUBLIC has it by default; explicit here for servers
-- that revoked it). PUBLIC has no CREATE on a database by default, so the role cannot create schemas.
GRANT CONNECT ON DATABASE :"DBNAME" TO :"app_role";
REVOKE CREATE ON DATABASE :"DBNAME" FROM :"app_role";
-- PostgreSQL 14 and older let PUBLIC create tables in schema public; from 15 on nobody can by default.
-- On those versions, consider (it affects every role of this database):
--   REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- PUBLIC may also create TEMPORARY tables by default (private to the session, gone at its end). The service
-- never does; to forbid it for everyone:
--   REVOKE TEMPORARY ON DATABASE :"DBNAME" FROM PUBLIC;

-- USAGE resolves names in the schema; without CREATE the role cannot add, alter or drop anything in it, and
-- only the owner can ALTER, DROP or TRUNCATE the tables.
REVOKE ALL ON SCHEMA :"schema" FROM :"app_role";
GRANT USAGE ON SCHEMA :"schema" TO :"app_role";

-- Start from nothing on every table, view and sequence of the schema, then grant per table.
REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM :"app_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"app_role";

-- messages: publish and publishMany INSERT; the relay, claims, dedup lookups, deadLetters and replay read;
-- retention (the active relay's maintenance loop, or outbox.purge()) DELETEs finished messages older than
-- retentionMs. It locks them first with SELECT ... FOR UPDATE SKIP LOCKED (so two processes purging at once take
-- disjoint messages), which needs UPDATE on at least one column; pg-outbox never updates a message, so UPDATE is
-- granted on created_at only. With retentionMs: 0 you may leave DELETE and UPDATE (created_at) out.
GRANT SELECT, INSERT, DELETE ON :"schema".messages TO :"app_role";
GRANT UPDATE (created_at) ON :"schema".messages TO :"app_role";

-- subscriptions: declareSubscription() and subscribe() + start() lock the row (SELECT ... FOR UPDATE), then insert
-- (ON CONFLICT DO NOTHING) or update it;
-- the relay and admin calls read. Subscriptions are never deleted by pg-outbox.
GRANT SELECT, INSERT, UPDATE ON :"schema".subscriptions TO :"app_role";

-- deliveries, the work queue of pending deliveries: the relay and replay() INSERT (replay() with OVERRIDING
-- SYSTEM VALUE when a dead letter keeps its id, which needs no more than INSERT); claims (SELECT ... FOR UPDATE
-- SKIP LOCKED, which needs UPDATE), retries, lease extensions and releases UPDATE; an ack, a dead letter and a
-- cancellation DELETE the row, which moves to one of the two tables below.
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".deliveries TO :"app_role";

-- completed_deliveries, the finished deliveries: an ack, and a cancellation (cancel(), or a claim that drops a
-- cancelled delivery), INSERT; retention DELETEs those of the messages it removes (by message_id, which needs
-- SELECT). Nothing updates them.
GRANT SELECT, INSERT, DELETE ON :"schema".completed_deliveries TO :"app_role";

-- delivery_failures, a row per failed attempt: retries, dead letters and claims that find an expired lease INSERT;
-- retention DELETEs those of the messages it removes.
GRANT SELECT, INSERT, DELETE ON :"schema".delivery_failures TO :"app_role";

-- consumers: each Outbox that runs consumers registers itself once (INSERT ... ON CONFLICT DO UPDATE).
GRANT SELECT, INSERT, UPDATE ON :"schema".consumers TO :"app_role";

-- rate_buckets, the token buckets of rate-limited subscriptions: declareSubscription() fills one (INSERT ... ON
-- CONFLICT DO UPDATE), every claim of a rate-limited subscription takes its tokens (UPDATE ... FROM a FOR UPDATE read).
GRANT SELECT, INSERT, UPDATE ON :"schema".rate_buckets TO :"app_role";

-- retention_state: retention records what it removed; replay({ since }) reads it.
GRANT SELECT, UPDATE ON :"schema".retention_state TO :"app_role";

-- dead_deliveries, the dead letters: a handler's last failure and a claim that gives up INSERT; deadLetters(),
-- status() and the ordered claim's blockKeyOnDead check read; replay() DELETEs (moving them back to deliveries),
-- and so does the cleanup of dead letters older than deadLetterRetentionMs. That cleanup locks them first with
-- SELECT ... FOR UPDATE SKIP LOCKED (so it passes over a dead letter a replay is moving), which needs UPDATE on at
-- least one column; pg-outbox never updates a dead letter, so UPDATE is granted on dead_at only.
GRANT SELECT, INSERT, DELETE ON :"schema".dead_deliveries TO :"app_role";
GRANT UPDATE (dead_at) ON :"schema".dead_deliveries TO :"app_role";

-- cancellations: cancel() INSERTs; the relay and claims read; retention DELETEs those of the messages it removes.
GRANT SELECT, INSERT, DELETE ON :"schema".cancellations TO :"app_role";

-- processed, the idempotency keys: once() and ctx.once() INSERT ... ON CONFLICT (scope, key) DO NOTHING, which
-- needs SELECT on the conflict columns too; the cleanup (the active relay, or outbox.cleanup()) reads, locks and
-- DELETEs expired keys. Its SELECT ... FOR UPDATE SKIP LOCKED needs UPDATE on at least one column; pg-outbox
-- never updates a key, so UPDATE is granted on recorded_at only.
GRANT SELECT, INSERT, DELETE ON :"schema".processed TO :"app_role";
GRANT UPDATE (recorded_at) ON :"schema".processed TO :"app_role";

-- relay_state, the relay's single position row: read and advanced by the relay, read by status().
GRANT SELECT, UPDATE ON :"schema".relay_state TO :"app_role";

-- The audit views that status() and journey() read. Views run with their owner's privileges.
GRANT SELECT ON :"schema".audit_messages, :"schema".audit_deliveries, :"schema".audit_failures,
  :"schema".audit_relay, :"schema".audit_subscriptions TO :"app_role";

-- Not granted, because not needed:
-- * sequences: the id columns are identity columns, whose values an INSERT draws without sequence privileges;
-- * pg_outbox_migrations: only migrate() reads or writes it, and migrate() runs as the owner;
-- * the views of 0.1 (message_deliveries, dead_letters, subscription_lag): the service reads the tables directly;
-- * VACUUM: only the owner may vacuum a table; the maintenance loop's VACUUM (relay.vacuum) gets a WARNING and
--   does nothing as this role, so leave vacuuming to autovacuum or run the loop (or a cron job) as the owner;
-- * functions and locks: pg_notify, LISTEN, advisory locks (one relay per schema; a relay batch against replay),
--   pg_current_snapshot(), pg_current_xact_id() and pg_control_system() (the relay checks which cluster it runs in)
--   are open to every role.

-- 3. Optional: the read-only audit role, through the documented views only. The views run with their owner's
-- privileges, so SELECT on them is enough: the role can read no table directly and write nothing. dead_letters and
-- audit_messages show message payloads; leave them out when auditors must not see them.
REVOKE ALL ON SCHEMA :"schema" FROM :"audit_role";
REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM :"audit_role";
GRANT USAGE ON SCHEMA :"schema" TO :"audit_role";
GRANT SELECT ON :"schema".message_deliveries, :"schema".dead_letters, :"schema".subscription_lag,
  :"schema".audit_messages, :"schema".audit_deliveries, :"schema".audit_failures, :"schema".audit_relay,
  :"schema".audit_subscriptions
  TO :"audit_role";

COMMIT;
