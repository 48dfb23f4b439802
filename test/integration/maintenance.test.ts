import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, OutboxOptions } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// The maintenance (cleanup of expired idempotency keys and dead letters) runs in a loop of its own on pool
// connections, only while this process's relay leads. A cleanup that fails or waits must cost the relay neither
// its lock nor its pace.

const DAY_MS = 86_400_000;
const TOPIC = 'maint.event';

interface Observed {
  outbox: Outbox;
  leader: boolean[];
  batches: number[];
  errors: { error: unknown; component: string }[];
  logs: Record<string, unknown>[];
}

/** SQLSTATE of an error, or undefined. */
const sqlstate = (error: unknown) => (error as { code?: unknown } | null)?.code;

describe('maintenance loop', () => {
  let t: OutboxTestContext;
  let role: string;
  let rolePool: pg.Pool;
  const blockers: pg.Client[] = [];
  const running: Outbox[] = [];

  beforeAll(async () => {
    t = await setupOutboxTest();
    await t.outbox().declareSubscription('maint', { topics: [TOPIC] });
    // A role that can do everything the relay does, but cannot delete idempotency keys.
    role = `outbox_maint_${randomBytes(4).toString('hex')}`;
    await t.pool.query(`CREATE ROLE ${role} LOGIN`);
    await t.pool.query(`GRANT USAGE ON SCHEMA outbox TO ${role}`);
    await t.pool.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA outbox TO ${role}`);
    await t.pool.query(`REVOKE DELETE ON outbox.processed FROM ${role}`);
    const url = new URL(t.db.url);
    url.username = role;
    rolePool = new pg.Pool({ connectionString: url.toString(), max: 10 });
  });

  afterEach(async () => {
    // Ended first: a blocker still holding its lock would make stop() wait for the cleanup statement it blocks.
    await Promise.all(blockers.splice(0).map((c) => c.end()));
    await Promise.all(running.splice(0).map((o) => o.stop()));
    await t.pool.query(`REVOKE DELETE ON outbox.processed FROM ${role}`);
    await t.pool.query('TRUNCATE outbox.processed');
  });

  afterAll(async () => {
    await rolePool?.end();
    await t.close();
    // Roles are cluster-wide; the grants went with the database.
    const admin = new pg.Client({ connectionString: new URL('/postgres', t.db.url).toString() });
    await admin.connect();
    await admin.query(`DROP ROLE IF EXISTS ${role}`).finally(() => admin.end());
  });

  /** An Outbox whose leadership changes, relay batches, errors and log lines are recorded. */
  function observed(overrides: Partial<OutboxOptions> = {}): Observed {
    const logs: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const outbox = t.outbox({ logger: pino({ level: 'info' }, sink), ...overrides });
    running.push(outbox);
    const o: Observed = { outbox, leader: [], batches: [], errors: [], logs };
    outbox.on('relay:leader', ({ leader }) => o.leader.push(leader));
    outbox.on('relay:batch', ({ messages }) => o.batches.push(messages));
    outbox.on('error', (error, { component }) => o.errors.push({ error, component }));
    return o;
  }

  /** Publishes one message and waits until a relay batch has fanned it out. */
  async function relaysOneMessage(o: Observed): Promise<void> {
    const before = o.batches.length;
    const { id } = await o.outbox.publish(t.pool, TOPIC, { at: Date.now() });
    await waitFor(`message ${id} relayed`, () => o.batches.length > before);
    expect(
      await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = $1', [id]),
    ).toBe(1);
  }

  /** Opens a transaction that holds an ACCESS EXCLUSIVE lock on processed until the test ends it. */
  async function lockProcessed(): Promise<pg.Client> {
    const blocker = new pg.Client({ connectionString: t.db.url });
    await blocker.connect();
    blockers.push(blocker);
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE outbox.processed IN ACCESS EXCLUSIVE MODE');
    return blocker;
  }

  const insertExpiredKey = (key: string) =>
    t.pool.query(
      `INSERT INTO outbox.processed (scope, key, recorded_at) VALUES ('maint', $1, now() - interval '40 days')`,
      [key],
    );
  const keys = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.processed');
  const failuresWith = (o: Observed, code: string) => o.errors.filter((e) => sqlstate(e.error) === code);

  it('keeps relaying while a cleanup statement waits on a lock', async () => {
    const o = observed({
      processedRetentionMs: DAY_MS,
      relay: { maintenanceIntervalMs: 100, sessionTimeoutMs: 600_000 },
    });
    const blocker = await lockProcessed();
    await o.outbox.start();
    await waitFor(
      'a cleanup statement waits for the lock on processed',
      async () =>
        (await count(
          t.pool,
          `SELECT count(*) AS n FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%.processed%'`,
        )) > 0,
    );
    await relaysOneMessage(o);
    await relaysOneMessage(o);
    expect(o.leader).toEqual([true]);
    await blocker.query('ROLLBACK');
  });

  it('keeps its leadership and relays while cleanup fails for want of privileges, and retries it', async () => {
    const o = observed({
      pool: rolePool,
      processedRetentionMs: DAY_MS,
      relay: { maintenanceIntervalMs: 100 },
    });
    await insertExpiredKey('denied');
    await o.outbox.start();
    for (let failures = 1; failures <= 3; failures++) {
      await waitFor(`cleanup failed ${failures} times`, () => failuresWith(o, '42501').length >= failures);
      await relaysOneMessage(o);
    }
    expect(o.leader).toEqual([true]);
    expect(new Set(o.errors.map((e) => e.component))).toEqual(new Set(['maintenance']));
    expect(o.logs.filter((l) => l.msg === 'cleanup failed')[0]).toMatchObject({
      component: 'maintenance',
      level: 50,
    });
    // Retried: once the privilege is there, the next attempt goes through.
    await t.pool.query(`GRANT DELETE ON outbox.processed TO ${role}`);
    await waitFor('the expired key deleted', async () => (await keys()) === 0);
    expect(o.leader).toEqual([true]);
  });

  it('keeps its leadership while cleanup statements time out on a lock, and retries them', async () => {
    const o = observed({
      processedRetentionMs: DAY_MS,
      relay: { maintenanceIntervalMs: 100, sessionTimeoutMs: 1_000 },
    });
    await insertExpiredKey('locked');
    const blocker = await lockProcessed();
    await o.outbox.start();
    for (let failures = 1; failures <= 3; failures++) {
      // 57014: canceled by statement_timeout.
      await waitFor(`cleanup timed out ${failures} times`, () => failuresWith(o, '57014').length >= failures);
      await relaysOneMessage(o);
    }
    expect(o.leader).toEqual([true]);
    expect(new Set(o.errors.map((e) => e.component))).toEqual(new Set(['maintenance']));
    await blocker.query('ROLLBACK');
    await waitFor('the expired key deleted', async () => (await keys()) === 0);
    expect(o.leader).toEqual([true]);
  });

  it('runs only in the process whose relay leads, and moves with the leadership', async () => {
    const leader = observed({ processedRetentionMs: DAY_MS, relay: { maintenanceIntervalMs: 100 } });
    // The standby's role cannot delete keys: a cleanup it ran would show as an error.
    const standby = observed({
      pool: rolePool,
      processedRetentionMs: DAY_MS,
      relay: { maintenanceIntervalMs: 100, standbyPollMs: 10 },
    });
    await leader.outbox.start();
    await waitFor('the first relay leads', () => leader.leader.includes(true));
    await standby.outbox.start();
    for (let round = 0; round < 3; round++) {
      await insertExpiredKey(`round-${round}`);
      await waitFor(
        `round ${round}: the leader's maintenance deleted the key`,
        async () => (await keys()) === 0,
      );
    }
    expect(standby.leader).toEqual([]);
    expect(standby.errors).toEqual([]);

    await leader.outbox.stop();
    await waitFor('the standby took over', () => standby.leader.includes(true));
    await waitFor('the new leader runs the maintenance', () => failuresWith(standby, '42501').length > 0);
    expect(standby.errors.every((e) => e.component === 'maintenance')).toBe(true);
  });
});
