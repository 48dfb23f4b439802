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
    expect(await outbox.cleanup()).toEqual({ processedKeysDeleted: 2503 });
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
    expect(await t.outbox({ processedRetentionMs: 0 }).cleanup()).toEqual({ processedKeysDeleted: 0 });
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
});
