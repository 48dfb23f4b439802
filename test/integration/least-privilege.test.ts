import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  createOutbox,
  discard,
  OutboxError,
  type Outbox,
  type OutboxMessage,
  type OutboxOptions,
} from '../../src/index.js';
import { count, testLogger, waitFor } from '../helpers/outbox.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

// examples/least-privilege.sql, applied after migrate() by the owner, must be enough for everything the
// runtime does, as a role that cannot run DDL, and grant nothing more than the matrix below.

const SCRIPT_PATH = fileURLToPath(new URL('../../examples/least-privilege.sql', import.meta.url));
const SCHEMA = 'lp_outbox';

/** What the app role may do on each relation of the schema, exactly: anything else must be denied. */
const EXPECTED_PRIVILEGES: Record<string, string[]> = {
  audit_deliveries: ['SELECT'],
  audit_failures: ['SELECT'],
  audit_messages: ['SELECT'],
  audit_relay: ['SELECT'],
  audit_subscriptions: ['SELECT'],
  cancellations: ['SELECT', 'INSERT', 'DELETE'],
  completed_deliveries: ['SELECT', 'INSERT', 'DELETE'],
  consumers: ['SELECT', 'INSERT', 'UPDATE'],
  consumers_id_seq: [],
  // Plus UPDATE on the column dead_at only (for the dead-letter cleanup's FOR UPDATE SKIP LOCKED).
  dead_deliveries: ['SELECT', 'INSERT', 'DELETE'],
  dead_letters: [],
  deliveries: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
  deliveries_id_seq: [],
  delivery_failures: ['SELECT', 'INSERT', 'DELETE'],
  message_deliveries: [],
  // Plus UPDATE on the column created_at only (for retention's FOR UPDATE SKIP LOCKED).
  messages: ['SELECT', 'INSERT', 'DELETE'],
  messages_id_seq: [],
  pg_outbox_migrations: [],
  pg_outbox_migrations_id_seq: [],
  // Plus UPDATE on the column recorded_at only (for the cleanup's FOR UPDATE SKIP LOCKED).
  processed: ['SELECT', 'INSERT', 'DELETE'],
  rate_buckets: ['SELECT', 'INSERT', 'UPDATE'],
  relay_state: ['SELECT', 'UPDATE'],
  retention_state: ['SELECT', 'UPDATE'],
  subscription_lag: [],
  subscriptions: ['SELECT', 'INSERT', 'UPDATE'],
  subscriptions_id_seq: [],
};
const TABLE_PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'];
const SEQUENCE_PRIVILEGES = ['USAGE', 'SELECT', 'UPDATE'];
const AUDIT_VIEWS = [
  'audit_deliveries',
  'audit_failures',
  'audit_messages',
  'audit_relay',
  'audit_subscriptions',
  'dead_letters',
  'message_deliveries',
  'subscription_lag',
];
/** The app role's column-level grants, as columnGrants() lists them. */
const columnGrantsOf = (role: string) => [
  `dead_deliveries.dead_at: ${role} UPDATE`,
  `messages.created_at: ${role} UPDATE`,
  `processed.recorded_at: ${role} UPDATE`,
];
/** psql is optional: the tests apply the script by substitution, and also run it with psql when on PATH. */
const HAS_PSQL = await promisify(execFile)('psql', ['--version']).then(
  () => true,
  () => false,
);

interface Roles {
  app: string;
  audit: string;
  password: string;
}

function newRoles(): Roles {
  const suffix = randomBytes(4).toString('hex');
  return {
    app: `outbox_app_${suffix}`,
    audit: `outbox_audit_${suffix}`,
    password: randomBytes(12).toString('base64url'),
  };
}

/** Replaces the script's psql variables the way psql does: identifiers quoted, the password as a literal. */
function substitute(script: string, vars: Record<string, string>): string {
  return script.replace(/:"(\w+)"|:'(\w+)'/g, (match, identifier?: string, literal?: string) => {
    const value = vars[identifier ?? literal ?? ''];
    if (value === undefined)
      throw new Error(`least-privilege.sql uses ${match}, which the test does not set`);
    return identifier !== undefined ? pg.escapeIdentifier(value) : pg.escapeLiteral(value);
  });
}

function urlAs(url: string, role: string, password: string): string {
  const u = new URL(url);
  u.username = role;
  u.password = password;
  return u.toString();
}

/** Postgres's error code for a statement, or 'ok'. */
async function sqlstateOf(pool: pg.Pool, sql: string): Promise<string> {
  return pool.query(sql).then(
    () => 'ok',
    (error: unknown) => (error as { code?: string }).code ?? String(error),
  );
}

describe('least privilege', () => {
  let db: TestDatabase;
  let owner: pg.Pool;
  let roles: Roles;
  let appPool: pg.Pool;
  const started: Outbox[] = [];
  const errors: unknown[] = [];
  const createdRoles: string[] = [];

  /** An Outbox whose pool logs in as the app role; its background errors fail the test. */
  function appOutbox(overrides: Partial<OutboxOptions> = {}): Outbox {
    const o = createOutbox({
      pool: appPool,
      schema: SCHEMA,
      logger: testLogger,
      shutdownTimeoutMs: 2_000,
      ...overrides,
    });
    o.on('error', (error, context) => errors.push({ error, context }));
    started.push(o);
    return o;
  }

  /** The app role's privileges on every table, view and sequence of a schema. */
  async function privilegeMatrix(role: string, schema: string): Promise<Record<string, string[]>> {
    const { rows } = await owner.query<{ name: string; privileges: string[] }>(
      `SELECT c.relname AS name,
              ARRAY(
                SELECT p
                FROM unnest(CASE WHEN c.relkind = 'S' THEN $3::text[] ELSE $2::text[] END) WITH ORDINALITY AS u(p, i)
                WHERE CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, p)
                           ELSE has_table_privilege($1, c.oid, p) END
                ORDER BY i
              ) AS privileges
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $4
         AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       ORDER BY c.relname`,
      [role, TABLE_PRIVILEGES, SEQUENCE_PRIVILEGES, schema],
    );
    return Object.fromEntries(rows.map((r) => [r.name, r.privileges]));
  }

  /** Column-level grants in a schema, as "table.column: ROLE PRIVILEGE". */
  async function columnGrants(schema: string): Promise<string[]> {
    const { rows } = await owner.query<{ grant: string }>(
      `SELECT c.relname || '.' || a.attname || ': ' || pg_get_userbyid(x.grantee) || ' ' || x.privilege_type AS grant
       FROM pg_attribute a
       JOIN pg_class c ON c.oid = a.attrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       CROSS JOIN LATERAL aclexplode(a.attacl) x
       WHERE n.nspname = $1
         AND a.attacl IS NOT NULL
       ORDER BY 1`,
      [schema],
    );
    return rows.map((r) => r.grant);
  }

  /** Relations, their ACLs and the applied migrations of the schema, plus every schema of the database. */
  async function catalogSnapshot(): Promise<unknown> {
    const relations = await owner.query(
      `SELECT c.relname, c.relkind, c.relacl::text, c.relowner::regrole::text AS owner,
              (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1
       ORDER BY c.relname`,
      [SCHEMA],
    );
    const schemas = await owner.query(`SELECT nspname, nspacl::text FROM pg_namespace ORDER BY nspname`);
    const migrations = await owner.query(`SELECT name FROM ${SCHEMA}.pg_outbox_migrations ORDER BY id`);
    return { relations: relations.rows, schemas: schemas.rows, migrations: migrations.rows };
  }

  async function applyScript(schema: string, r: Roles): Promise<void> {
    createdRoles.push(r.app, r.audit);
    const script = await readFile(SCRIPT_PATH, 'utf8');
    await owner.query(
      substitute(script, {
        schema,
        app_role: r.app,
        audit_role: r.audit,
        app_password: r.password,
        DBNAME: db.name,
      }),
    );
  }

  beforeAll(async () => {
    db = await createTestDatabase(inject('databaseUrl'));
    owner = new pg.Pool({ connectionString: db.url, max: 5 });
    await createOutbox({ pool: owner, schema: SCHEMA, logger: testLogger }).migrate();
    roles = newRoles();
    await applyScript(SCHEMA, roles);
    appPool = new pg.Pool({ connectionString: urlAs(db.url, roles.app, roles.password), max: 10 });
  });

  afterEach(async () => {
    await Promise.all(started.splice(0).map((o) => o.stop()));
    expect(errors.splice(0)).toEqual([]);
  });

  afterAll(async () => {
    try {
      await appPool?.end();
      // Roles are cluster-wide: revoke what they hold in this database, then drop them.
      const { rows } = await owner.query<{ rolname: string }>(
        'SELECT rolname FROM pg_roles WHERE rolname = ANY ($1::text[])',
        [createdRoles],
      );
      const names = rows.map((r) => pg.escapeIdentifier(r.rolname));
      if (names.length > 0) {
        await owner.query(`DROP OWNED BY ${names.join(', ')}`);
        for (const name of names) await owner.query(`DROP ROLE ${name}`);
      }
    } finally {
      await owner?.end();
      await db?.drop();
    }
  });

  it('logs in as a role that is no superuser and may create nothing in the database or the schema', async () => {
    const { rows } = await appPool.query<Record<string, unknown>>(
      `SELECT current_user AS "user",
              r.rolsuper AS superuser,
              r.rolcreatedb AS createdb,
              r.rolcreaterole AS createrole,
              has_database_privilege(current_database(), 'CREATE') AS "createInDatabase",
              has_schema_privilege($1, 'CREATE') AS "createInSchema",
              has_schema_privilege($1, 'USAGE') AS "usage"
       FROM pg_roles r
       WHERE r.rolname = current_user`,
      [SCHEMA],
    );
    expect(rows).toEqual([
      {
        user: roles.app,
        superuser: false,
        createdb: false,
        createrole: false,
        createInDatabase: false,
        createInSchema: false,
        usage: true,
      },
    ]);
  });

  it('holds exactly the documented privileges: no message or finished delivery updated, no sequences, only the audit_* views', async () => {
    expect(await privilegeMatrix(roles.app, SCHEMA)).toEqual(EXPECTED_PRIVILEGES);
    expect(await columnGrants(SCHEMA)).toEqual(columnGrantsOf(roles.app));
  });

  it('publishes in the caller’s transaction, dedups and cancels; a rollback writes nothing', async () => {
    const outbox = appOutbox();
    const messages = () => count(owner, `SELECT count(*) AS n FROM ${SCHEMA}.messages`);
    const before = await messages();
    const client = await appPool.connect();
    try {
      await client.query('BEGIN');
      await outbox.publish(client, 'lp.order', { n: 1 }, { key: 'order-1' });
      await outbox.publishMany(client, [
        { topic: 'lp.order', payload: { n: 2 } },
        { topic: 'lp.order', payload: { n: 3 }, dedupKey: 'lp-batch' },
      ]);
      await client.query('COMMIT');
      await client.query('BEGIN');
      await outbox.publish(client, 'lp.order', { n: 4 });
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    expect(await messages()).toBe(before + 3);

    const first = await outbox.publish(appPool, 'lp.order', { n: 5 }, { dedupKey: 'lp-request' });
    expect(await outbox.publish(appPool, 'lp.order', { n: 5 }, { dedupKey: 'lp-request' })).toEqual({
      id: first.id,
      duplicate: true,
    });
    expect(
      await outbox.publishMany(appPool, [{ topic: 'lp.order', payload: 3, dedupKey: 'lp-batch' }]),
    ).toEqual([expect.objectContaining({ duplicate: true })]);
    expect(await outbox.cancel(appPool, first.id)).toEqual({ cancelled: 0 });
    expect(await count(owner, `SELECT count(*) AS n FROM ${SCHEMA}.cancellations`)).toBe(1);
  });

  it('declares subscriptions, relays, and consumes in lease and transactional mode, extending leases', async () => {
    const outbox = appOutbox();
    const seen = { lease: [] as OutboxMessage[], transactional: [] as OutboxMessage[] };
    let extended = false;
    await outbox.declareSubscription('lp-lease', { topics: ['lp.flow.paid', 'lp.flow.slow'] });
    await outbox.declareSubscription('lp-tx', { topics: ['lp.flow.*'], ordered: true });
    outbox.subscribe('lp-lease', { topics: ['lp.flow.paid', 'lp.flow.slow'], leaseMs: 300 }, async (m) => {
      if (m.topic === 'lp.flow.slow') {
        // Keep the handler running until the heartbeat (every leaseMs / 3) moved the lease: extendLeases ran.
        const leaseOf = async () =>
          (
            await owner.query<{ until: Date }>(
              `SELECT leased_until AS until FROM ${SCHEMA}.deliveries WHERE id = $1`,
              [m.deliveryId],
            )
          ).rows[0]?.until.getTime() ?? 0;
        const first = await leaseOf();
        await waitFor('the lease was extended', async () => (await leaseOf()) > first);
        extended = true;
      }
      seen.lease.push(m);
    });
    outbox.subscribe(
      'lp-tx',
      { topics: ['lp.flow.*'], mode: 'transactional', ordered: true },
      async (m, ctx) => {
        const result = await ctx.once(undefined, () => Promise.resolve(m.id));
        expect(result).toEqual({ duplicate: false, result: m.id });
        seen.transactional.push(m);
      },
    );
    await outbox.start();

    const client = await appPool.connect();
    try {
      await client.query('BEGIN');
      for (const n of [1, 2, 3]) await outbox.publish(client, 'lp.flow.paid', { n }, { key: 'customer-1' });
      await outbox.publish(client, 'lp.flow.slow', { n: 4 });
      await client.query('COMMIT');
    } finally {
      client.release();
    }

    await waitFor('both subscriptions handled all four', () =>
      seen.lease.length === 4 && seen.transactional.length === 4 ? true : undefined,
    );
    expect(extended).toBe(true);
    // The ordered subscription handled customer-1's messages in publish order.
    expect(seen.transactional.filter((m) => m.key === 'customer-1').map((m) => m.payload)).toEqual([
      { n: 1 },
      { n: 2 },
      { n: 3 },
    ]);
    await waitFor('all eight acks recorded', async () => {
      const done = await count(
        owner,
        `SELECT count(*) AS n FROM ${SCHEMA}.message_deliveries
         WHERE subscription IN ('lp-lease', 'lp-tx') AND state = 'done'`,
      );
      return done === 8;
    });
    expect(await count(owner, `SELECT count(*) AS n FROM ${SCHEMA}.processed WHERE scope = 'lp-tx'`)).toBe(4);
  });

  it.each(['lease', 'transactional'] as const)(
    'retries, dead-letters, lists and replays in %s mode, and reports it in status()',
    async (mode) => {
      const outbox = appOutbox();
      const name = `lp-retry-${mode}`;
      const topic = `lp.retry.${mode}`;
      let replayed = false;
      const handled: OutboxMessage[] = [];
      await outbox.declareSubscription(name, { topics: [topic, `${topic}.discard`] });
      outbox.subscribe(
        name,
        {
          topics: [topic, `${topic}.discard`],
          mode,
          maxAttempts: 2,
          retry: { minDelayMs: 0, maxDelayMs: 5 },
        },
        (m) => {
          if (m.topic.endsWith('.discard') && !replayed) throw discard('not wanted');
          if (!replayed) throw new Error('boom');
          handled.push(m);
        },
      );
      await outbox.start();
      await outbox.publish(appPool, topic, { retry: true });
      await outbox.publish(appPool, `${topic}.discard`, { discard: true });

      const dead = await waitFor('both are dead letters', async () => {
        const letters = await outbox.deadLetters(name);
        return letters.length === 2 ? letters : undefined;
      });
      expect(dead.map((d) => [d.topic, d.attempt, d.lastError])).toEqual([
        [topic, 2, expect.stringContaining('boom')],
        [`${topic}.discard`, 1, expect.stringContaining('not wanted')],
      ]);
      const status = await outbox.status();
      expect(status.subscriptions.find((s) => s.name === name)).toMatchObject({ dead: 2, pending: 0 });
      expect(status.relay).toEqual({ backlog: 0, lagMs: expect.any(Number) as number });

      replayed = true;
      expect(await outbox.replay(name, { ids: [dead[0]?.deliveryId ?? '0'] })).toEqual({ replayed: 1 });
      expect(await outbox.replay(name)).toEqual({ replayed: 1 });
      await waitFor('both replays handled', () => handled.length === 2);
      await waitFor('no dead letters left', async () => (await outbox.deadLetters(name)).length === 0);
    },
  );

  it('consumes a rate-limited, key-limited subscription', async () => {
    const outbox = appOutbox();
    const name = 'lp-limited';
    await outbox.declareSubscription(name, {
      topics: ['lp.limited'],
      rateLimit: { perSecond: 1000 },
      keyConcurrency: 1,
    });
    const handled: string[] = [];
    outbox.subscribe(name, { topics: ['lp.limited'] }, (m) => {
      handled.push(m.id);
    });
    await outbox.start();
    await outbox.publishMany(
      appPool,
      [1, 2, 3, 4].map((i) => ({ topic: 'lp.limited', key: `k${i % 2}`, payload: { i } })),
    );
    await waitFor('all four handled', () => handled.length === 4);
    await outbox.stop();
  });

  it('runs once() in a transaction of its own and cleans up expired keys and dead letters, on demand and in the relay', async () => {
    const outbox = appOutbox({
      relay: { maintenanceIntervalMs: 100 },
      deadLetterRetentionMs: 7 * 24 * 3_600_000,
    });
    let runs = 0;
    const fn = () => Promise.resolve(++runs);
    expect(await outbox.once(appPool, 'lp-once', 'key-1', fn)).toEqual({ duplicate: false, result: 1 });
    expect(await outbox.once(appPool, 'lp-once', 'key-1', fn)).toEqual({ duplicate: true });
    const client = await appPool.connect();
    try {
      await client.query('BEGIN');
      expect(await outbox.once(client, 'lp-once', 'key-2', fn)).toEqual({ duplicate: false, result: 2 });
      await client.query('COMMIT');
    } finally {
      client.release();
    }

    const expiredKey = (key: string) =>
      owner.query(
        `INSERT INTO ${SCHEMA}.processed (scope, key, recorded_at) VALUES ('lp-old', $1, now() - interval '40 days')`,
        [key],
      );
    // Dead letters of a subscription of their own, written by the owner: one died 40 days ago (past the 7 days
    // kept), one just now. Their ids lie far above any delivery id this file makes.
    await outbox.declareSubscription('lp-dead-retention', { topics: ['lp.dead-retention'] });
    let nextDeadId = 9_000_000_000;
    const deadLetter = (age: string) =>
      owner.query(
        `INSERT INTO ${SCHEMA}.dead_deliveries (id, subscription_id, message_id, attempt, last_error, created_at, dead_at)
         SELECT $1::bigint, s.id, 0, 1, 'boom', now() - $2::interval, now() - $2::interval
         FROM ${SCHEMA}.subscriptions s WHERE s.name = 'lp-dead-retention'`,
        [String(nextDeadId++), age],
      );
    const deadLetters = () =>
      owner.query<{ id: string }>(
        `SELECT x.id FROM ${SCHEMA}.dead_deliveries x JOIN ${SCHEMA}.subscriptions s ON s.id = x.subscription_id
         WHERE s.name = 'lp-dead-retention' ORDER BY x.id`,
      );
    await expiredKey('on-demand');
    await deadLetter('40 days');
    await deadLetter('0 seconds');
    expect(await outbox.cleanup()).toEqual({ processedKeysDeleted: 1, deadLettersDeleted: 1 });
    expect((await deadLetters()).rows).toEqual([{ id: '9000000001' }]);

    await outbox.start();
    await expiredKey('by-the-relay');
    await deadLetter('40 days');
    await waitFor('the relay’s maintenance deleted the expired key and dead letter', async () => {
      const keys = await count(owner, `SELECT count(*) AS n FROM ${SCHEMA}.processed WHERE scope = 'lp-old'`);
      return keys === 0 && (await deadLetters()).rows.length === 1;
    });
    expect((await deadLetters()).rows).toEqual([{ id: '9000000001' }]);
    expect(await count(owner, `SELECT count(*) AS n FROM ${SCHEMA}.processed WHERE scope = 'lp-once'`)).toBe(
      2,
    );
  });

  it('removes finished messages with their history, replays from a time and shows a journey', async () => {
    const outbox = appOutbox();
    await outbox.declareSubscription('lp-retention', { topics: ['lp.retention'] });
    const since = new Date();
    const published = await outbox.publishMany(
      appPool,
      Array.from({ length: 20 }, (_, i) => ({ topic: 'lp.retention', payload: { i } })),
    );
    let failed = false;
    outbox.subscribe(
      'lp-retention',
      { topics: ['lp.retention'], retry: { minDelayMs: 0, maxDelayMs: 0 }, pollIntervalMs: 20 },
      () => {
        if (!failed) {
          failed = true;
          throw new Error('first attempt fails');
        }
      },
    );
    await outbox.start();
    const ids = published.map((p) => p.id);
    const done = () =>
      count(
        owner,
        `SELECT count(*) AS n FROM ${SCHEMA}.audit_deliveries WHERE message_id = ANY ($1::bigint[]) AND status = 'done'`,
        [ids],
      );
    await waitFor('all 20 done', async () => (await done()) === 20);
    expect(await outbox.replay('lp-retention', { since })).toEqual({ replayed: 20, next: null });
    await waitFor('all 20 done again', async () => (await done()) === 40);
    const journey = await outbox.journey(ids[0] ?? '0');
    expect(journey?.deliveries.map((d) => d.status)).toEqual(['done', 'done']);
    await outbox.stop();

    await owner.query(
      `UPDATE ${SCHEMA}.messages SET created_at = created_at - interval '8 days' WHERE id = ANY ($1::bigint[])`,
      [ids],
    );
    expect(await outbox.purge()).toMatchObject({ messages: 20, finishedDeliveries: 40, failures: 1 });
    expect(await outbox.journey(ids[0] ?? '0')).toBeNull();
  });

  it('cannot migrate: migrate() fails with OUTBOX_MIGRATION_FAILED and changes nothing', async () => {
    const before = await catalogSnapshot();
    const error = await appOutbox()
      .migrate()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(OutboxError);
    expect(error).toMatchObject({ code: 'OUTBOX_MIGRATION_FAILED', cause: { code: '42501' } });
    expect(await catalogSnapshot()).toEqual(before);
  });

  it.each([
    ['CREATE TABLE in the outbox schema', `CREATE TABLE ${SCHEMA}.x ()`],
    ['CREATE VIEW in the outbox schema', `CREATE VIEW ${SCHEMA}.v AS SELECT 1 AS one`],
    ['CREATE TABLE in schema public', 'CREATE TABLE public.x ()'],
    ['CREATE SCHEMA', 'CREATE SCHEMA lp_other'],
    ['ALTER TABLE', `ALTER TABLE ${SCHEMA}.messages ADD COLUMN x int`],
    ['CREATE INDEX', `CREATE INDEX ON ${SCHEMA}.messages (topic)`],
    ['DROP TABLE', `DROP TABLE ${SCHEMA}.messages`],
    ['TRUNCATE', `TRUNCATE ${SCHEMA}.deliveries`],
    ['UPDATE messages (never changed)', `UPDATE ${SCHEMA}.messages SET topic = topic`],
    ['UPDATE messages payload (never changed)', `UPDATE ${SCHEMA}.messages SET payload = payload`],
    ['UPDATE completed_deliveries', `UPDATE ${SCHEMA}.completed_deliveries SET attempt = attempt`],
    ['UPDATE delivery_failures', `UPDATE ${SCHEMA}.delivery_failures SET error = error`],
    ['DELETE FROM consumers', `DELETE FROM ${SCHEMA}.consumers`],
    ['UPDATE processed keys', `UPDATE ${SCHEMA}.processed SET key = key`],
    ['UPDATE dead letters', `UPDATE ${SCHEMA}.dead_deliveries SET attempt = attempt`],
    ['DELETE FROM subscriptions', `DELETE FROM ${SCHEMA}.subscriptions`],
    ['SELECT FROM pg_outbox_migrations', `SELECT * FROM ${SCHEMA}.pg_outbox_migrations`],
    ['SELECT FROM an audit view', `SELECT * FROM ${SCHEMA}.message_deliveries`],
    ['nextval on a sequence', `SELECT nextval('${SCHEMA}.messages_id_seq')`],
  ])('is denied %s with permission denied (42501), and the catalog is unchanged', async (_, sql) => {
    const before = await catalogSnapshot();
    expect(await sqlstateOf(appPool, sql)).toBe('42501');
    expect(await catalogSnapshot()).toEqual(before);
  });

  describe('the audit role', () => {
    /** Runs one statement as the audit role (a NOLOGIN role: the owner session switches to it). */
    async function asAudit(sql: string): Promise<string> {
      const client = await owner.connect();
      try {
        await client.query('BEGIN');
        await client.query(`SET LOCAL ROLE ${pg.escapeIdentifier(roles.audit)}`);
        await client.query(sql);
        return 'ok';
      } catch (error) {
        return (error as { code?: string }).code ?? String(error);
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    }

    it.each(AUDIT_VIEWS)('reads the view %s', async (view) => {
      expect(await asAudit(`SELECT * FROM ${SCHEMA}.${view}`)).toBe('ok');
    });

    it.each([
      ['read a table directly', `SELECT * FROM ${SCHEMA}.messages`],
      ['publish', `INSERT INTO ${SCHEMA}.messages (topic, payload) VALUES ('x', '{}')`],
      ['change a delivery', `UPDATE ${SCHEMA}.deliveries SET attempt = 0`],
      ['create a table', `CREATE TABLE ${SCHEMA}.x ()`],
    ])('cannot %s', async (_, sql) => {
      expect(await asAudit(sql)).toBe('42501');
    });

    it('holds SELECT on the three views and nothing else', async () => {
      const matrix = await privilegeMatrix(roles.audit, SCHEMA);
      const granted = Object.entries(matrix).filter(([, privileges]) => privileges.length > 0);
      expect(granted).toEqual(AUDIT_VIEWS.map((view) => [view, ['SELECT']]));
    });
  });

  it.runIf(HAS_PSQL)(
    'grants the same when psql runs the script with -v variables, as its header says',
    async () => {
      const schema = 'lp_psql';
      await createOutbox({ pool: owner, schema, logger: testLogger }).migrate();
      const viaPsql = newRoles();
      createdRoles.push(viaPsql.app, viaPsql.audit);
      await promisify(execFile)('psql', [
        db.url,
        ...['-X', '-q', '-v', 'ON_ERROR_STOP=1'],
        ...['-v', `schema=${schema}`, '-v', `app_role=${viaPsql.app}`],
        ...['-v', `app_password=${viaPsql.password}`, '-v', `audit_role=${viaPsql.audit}`],
        ...['-f', SCRIPT_PATH],
      ]);
      expect(await privilegeMatrix(viaPsql.app, schema)).toEqual(EXPECTED_PRIVILEGES);
      expect(await privilegeMatrix(viaPsql.audit, schema)).toEqual(
        await privilegeMatrix(roles.audit, SCHEMA),
      );
      expect(await columnGrants(schema)).toEqual(columnGrantsOf(viaPsql.app));
    },
  );
});
