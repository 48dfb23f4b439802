import { Writable } from 'node:stream';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// Retention deletes, and only a VACUUM makes the space reusable. The maintenance loop vacuums an outbox table once
// its dead rows pass autovacuum's default trigger, whether autovacuum runs or not (it is off for the table here, as
// it is for the whole of the machine's PostgreSQL 15).

describe('maintenance VACUUM', () => {
  let t: OutboxTestContext;
  const running: Outbox[] = [];

  const stats = async () => {
    const { rows } = await t.pool.query<{ vacuums: string; dead: string }>(
      `SELECT (vacuum_count + autovacuum_count)::text AS vacuums, n_dead_tup::text AS dead
       FROM pg_stat_user_tables WHERE schemaname = 'outbox' AND relname = 'processed'`,
    );
    return { vacuums: Number(rows[0]?.vacuums ?? 0), dead: Number(rows[0]?.dead ?? 0) };
  };
  /** Idempotency keys recorded `ageDays` ago, which the default processedRetentionMs (30 days) removes. */
  const insertKeys = (scope: string, n: number, ageDays: number) =>
    t.pool.query(
      `INSERT INTO outbox.processed (scope, key, recorded_at)
       SELECT $1::text, g::text, now() - $3::int * interval '1 day' FROM generate_series(1, $2::int) g`,
      [scope, n, ageDays],
    );
  const keys = (scope: string) =>
    count(t.pool, `SELECT count(*) AS n FROM outbox.processed WHERE scope = $1`, [scope]);

  beforeAll(async () => {
    t = await setupOutboxTest();
    await t.pool.query('ALTER TABLE outbox.processed SET (autovacuum_enabled = false)');
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((o) => o.stop()));
    await t.pool.query('TRUNCATE outbox.processed');
  });
  afterAll(async () => t.close());

  const start = async (vacuum: boolean) => {
    const outbox = t.outbox({ relay: { maintenanceIntervalMs: 100, vacuum } });
    running.push(outbox);
    await outbox.start();
    return outbox;
  };

  it('vacuums a table whose dead rows passed the trigger after a retention pass', async () => {
    const before = await stats();
    await insertKeys('old', 30_000, 40);
    await insertKeys('young', 10, 1);
    await start(true);
    await waitFor('the expired keys deleted', async () => (await keys('old')) === 0);
    // Postgres publishes a table's statistics within seconds; a later pass sees the dead rows and vacuums.
    await waitFor('a VACUUM of processed', async () => (await stats()).vacuums > before.vacuums, 60_000, 100);
    expect(await keys('young')).toBe(10);
    expect((await stats()).dead).toBeLessThan(10_000);
  });

  it('leaves the table alone with relay.vacuum false', async () => {
    const before = await stats();
    await insertKeys('old', 30_000, 40);
    await start(false);
    await waitFor('the expired keys deleted', async () => (await keys('old')) === 0);
    await waitFor(
      'the statistics show the dead rows',
      async () => (await stats()).dead >= 30_000,
      60_000,
      100,
    );
    // Two more passes after the dead rows became visible: each would have vacuumed.
    for (const scope of ['later-1', 'later-2']) {
      await insertKeys(scope, 1, 40);
      await waitFor(`the pass that deletes ${scope}`, async () => (await keys(scope)) === 0);
    }
    expect((await stats()).vacuums).toBe(before.vacuums);
  });
});

// A database of its own: its statistics start clean (a TRUNCATE's, counted late, would reset the dead rows).
describe('maintenance VACUUM while the xmin horizon is held', () => {
  let t: OutboxTestContext;
  const running: Outbox[] = [];
  const holders: pg.Client[] = [];

  beforeAll(async () => {
    t = await setupOutboxTest();
    await t.pool.query('ALTER TABLE outbox.processed SET (autovacuum_enabled = false)');
  });
  afterAll(async () => {
    await Promise.all(holders.map((c) => c.end()));
    await Promise.all(running.map((o) => o.stop()));
    await t.close();
  });

  const stats = async () => {
    const { rows } = await t.pool.query<{ vacuums: string; dead: string }>(
      `SELECT (vacuum_count + autovacuum_count)::text AS vacuums, n_dead_tup::text AS dead
       FROM pg_stat_user_tables WHERE schemaname = 'outbox' AND relname = 'processed'`,
    );
    return { vacuums: Number(rows[0]?.vacuums ?? 0), dead: Number(rows[0]?.dead ?? 0) };
  };
  const insertKeys = (scope: string, n: number, ageDays: number) =>
    t.pool.query(
      `INSERT INTO outbox.processed (scope, key, recorded_at)
       SELECT $1::text, g::text, now() - $3::int * interval '1 day' FROM generate_series(1, $2::int) g`,
      [scope, n, ageDays],
    );
  const keys = (scope: string) =>
    count(t.pool, `SELECT count(*) AS n FROM outbox.processed WHERE scope = $1`, [scope]);

  /** An Outbox whose maintenance vacuums, its log lines in `logs`. */
  const start = async (logs: Record<string, unknown>[]) => {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const outbox = t.outbox({ logger: pino({ level: 'info' }, sink), relay: { maintenanceIntervalMs: 100 } });
    running.push(outbox);
    await outbox.start();
    return outbox;
  };

  /** A transaction elsewhere that holds a snapshot, and with it the xmin horizon, until the test commits it. */
  async function holdSnapshot(): Promise<{ client: pg.Client; pid: number }> {
    const client = new pg.Client({ connectionString: t.db.url });
    await client.connect();
    holders.push(client);
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await client.query('SELECT 1 FROM outbox.processed LIMIT 1');
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    return { client, pid: rows[0]?.pid ?? 0 };
  }

  it('vacuums a table once, not every pass, while a snapshot holds its dead rows, and again once it ends', async () => {
    const holder = await holdSnapshot();
    const before = await stats();
    await insertKeys('old', 30_000, 40);
    await t.pool.query(`DELETE FROM outbox.processed WHERE scope = 'old'`);
    // All of them in the statistics first: any counted only after the VACUUM would come on top of what it left.
    await waitFor(
      'the statistics show the dead rows',
      async () => (await stats()).dead >= 30_000,
      60_000,
      100,
    );
    const logs: Record<string, unknown>[] = [];
    await start(logs);
    await waitFor('a VACUUM of processed', async () => (await stats()).vacuums > before.vacuums, 60_000, 100);
    // It could remove none of them: the snapshot may still see them.
    expect((await stats()).dead).toBeGreaterThanOrEqual(30_000);

    // Five more passes, each known by the key it deletes; each starts after the one before has vacuumed, or not.
    for (let pass = 1; pass <= 5; pass++) {
      await insertKeys(`later-${pass}`, 1, 40);
      await waitFor(`the pass that deletes later-${pass}`, async () => (await keys(`later-${pass}`)) === 0);
    }
    expect(await stats()).toMatchObject({ vacuums: before.vacuums + 1 });
    expect((await stats()).dead).toBeGreaterThanOrEqual(30_000);
    const warnings = logs.filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({
      table: 'processed',
      msg: 'vacuum left the dead rows: the xmin horizon holds them',
      holder: { kind: 'backend', pid: holder.pid, state: 'idle in transaction' },
    });

    await holder.client.query('COMMIT');
    await waitFor(
      'a VACUUM once the snapshot is gone',
      async () => (await stats()).vacuums > before.vacuums + 1,
    );
    expect((await stats()).dead).toBeLessThan(10_000);
    expect(logs.filter((l) => l.level === 40)).toHaveLength(1);
  });
});
