import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const DAY_MS = 86_400_000;

describe('retention of idempotency keys', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  const keys = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.processed');

  /** Records keys through the public API, then ages the given number of them by SQL. */
  async function recordKeys(scope: string, fresh: number, aged: number, ageDays: number): Promise<void> {
    const outbox = t.outbox();
    for (let i = 0; i < fresh + aged; i++) await outbox.once(t.pool, scope, `k${i}`, () => Promise.resolve());
    await t.pool.query(
      `UPDATE outbox.processed SET recorded_at = now() - $3::int * interval '1 day'
       WHERE scope = $1 AND key IN (SELECT 'k' || g FROM generate_series(0, $2::int - 1) g)`,
      [scope, aged, ageDays],
    );
  }

  it('deletes keys older than the retention in bounded batches and keeps the rest', async () => {
    await t.pool.query('TRUNCATE outbox.processed');
    await t.pool.query(
      `INSERT INTO outbox.processed (scope, key, recorded_at)
       SELECT 'bulk', 'old-' || g, now() - interval '40 days' FROM generate_series(1, 2500) g`,
    );
    await recordKeys('mixed', 5, 3, 31);
    const outbox = t.outbox({ processedRetentionMs: 30 * DAY_MS });
    expect(await outbox.cleanup()).toEqual({ processedKeysDeleted: 2503, deadLettersDeleted: 0 });
    expect(await keys()).toBe(5);
    // The surviving keys still deduplicate.
    expect(await outbox.once(t.pool, 'mixed', 'k7', () => Promise.resolve(1))).toEqual({ duplicate: true });
    // An aged-out key is new again: that is what retention means, so it must outlast any redelivery.
    expect(await outbox.once(t.pool, 'mixed', 'k0', () => Promise.resolve(1))).toEqual({
      duplicate: false,
      result: 1,
    });
  });

  it('keeps every key when the retention is 0', async () => {
    await t.pool.query('TRUNCATE outbox.processed');
    await recordKeys('forever', 0, 4, 3650);
    expect(await t.outbox({ processedRetentionMs: 0 }).cleanup()).toEqual({
      processedKeysDeleted: 0,
      deadLettersDeleted: 0,
    });
    expect(await keys()).toBe(4);
  });

  it('is run by the active relay on its maintenance interval', async () => {
    await t.pool.query('TRUNCATE outbox.processed');
    await recordKeys('relay', 2, 2, 2);
    const outbox = t.outbox({ processedRetentionMs: DAY_MS, relay: { maintenanceIntervalMs: 100 } });
    await outbox.start();
    await waitFor('the relay removed the expired keys', async () => (await keys()) === 2);
    await outbox.stop();
  });

  /** Inserts `n` keys recorded 40 days ago, in one statement. */
  const insertExpired = (n: number) =>
    t.pool.query(
      `INSERT INTO outbox.processed (scope, key, recorded_at)
       SELECT 'backlog', 'k' || g, now() - interval '40 days' FROM generate_series(1, $1::int) g`,
      [n],
    );

  it('deletes a backlog of 150,000 expired keys in one cleanup() call', async () => {
    await t.pool.query('TRUNCATE outbox.processed');
    await insertExpired(150_000);
    await recordKeys('fresh', 3, 0, 0);
    const outbox = t.outbox({ processedRetentionMs: 30 * DAY_MS });
    expect(await outbox.cleanup()).toEqual({ processedKeysDeleted: 150_000, deadLettersDeleted: 0 });
    expect(await keys()).toBe(3);
  });

  it('has the relay work off a backlog of 150,000 expired keys in passes that follow each other at once', async () => {
    await t.pool.query('TRUNCATE outbox.processed');
    await insertExpired(150_000);
    // An interval far longer than the test: only passes that run as long as work remains can empty the table.
    const outbox = t.outbox({ processedRetentionMs: DAY_MS, relay: { maintenanceIntervalMs: 3_600_000 } });
    await outbox.start();
    await waitFor('the relay removed all expired keys', async () => (await keys()) === 0);
    await outbox.stop();
  });
});

describe('retention of dead letters', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  const deadLetters = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.dead_deliveries');

  /** Inserts `n` dead letters that died `ageDays` ago (ids from `firstId` on), in one statement. */
  const insertDead = (firstId: number, n: number, ageDays: number) =>
    t.pool.query(
      `INSERT INTO outbox.dead_deliveries (id, subscription_id, message_id, attempt, last_error, created_at, dead_at)
       SELECT g, 1, g, 10, 'boom', now() - $3::int * interval '1 day', now() - $3::int * interval '1 day'
       FROM generate_series($1::bigint, $1::bigint + $2::int - 1) g`,
      [firstId, n, ageDays],
    );

  it('deletes dead letters older than deadLetterRetentionMs and keeps the younger ones', async () => {
    await t.pool.query('TRUNCATE outbox.dead_deliveries');
    await insertDead(1, 12_000, 40);
    await insertDead(20_001, 5, 31);
    await insertDead(30_001, 4, 29);
    const outbox = t.outbox({ deadLetterRetentionMs: 30 * DAY_MS });
    expect(await outbox.cleanup()).toEqual({ processedKeysDeleted: 0, deadLettersDeleted: 12_005 });
    expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.dead_deliveries WHERE id > 30000')).toBe(4);
    expect(await deadLetters()).toBe(4);
  });

  it('keeps dead letters 30 days by default, and every one with deadLetterRetentionMs 0', async () => {
    await t.pool.query('TRUNCATE outbox.dead_deliveries');
    await insertDead(1, 3, 3650);
    await insertDead(10, 2, 29);
    expect(await t.outbox({ deadLetterRetentionMs: 0 }).cleanup()).toMatchObject({ deadLettersDeleted: 0 });
    expect(await deadLetters()).toBe(5);
    expect(await t.outbox().cleanup()).toEqual({ processedKeysDeleted: 0, deadLettersDeleted: 3 });
    expect(await deadLetters()).toBe(2);
  });

  it('is run by the active relay on its maintenance interval', async () => {
    await t.pool.query('TRUNCATE outbox.dead_deliveries');
    await insertDead(1, 7_000, 10);
    await insertDead(10_001, 2, 1);
    const outbox = t.outbox({ deadLetterRetentionMs: 7 * DAY_MS, relay: { maintenanceIntervalMs: 100 } });
    await outbox.start();
    await waitFor('the relay removed the expired dead letters', async () => (await deadLetters()) === 2);
    await outbox.stop();
  });

  it('rejects a deadLetterRetentionMs that is not a whole number of milliseconds from 0', () => {
    for (const value of [-1, 1.5, '1000', null]) {
      expect(() => t.outbox({ deadLetterRetentionMs: value as number })).toThrow(
        expect.objectContaining({ code: 'OUTBOX_INVALID_OPTION', value }) as Error,
      );
    }
  });
});
