import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { REDIS_URL, redisAnswers } from '../helpers/redis.js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

const run = promisify(execFile);

const hasRedis = await redisAnswers();

/** Runs the example in a child Node process, the way `npm run example:order-points` does. */
async function runExample(databaseUrl: string, redisUrl: string): Promise<string[]> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'examples/order-points/main.ts'], {
    env: { ...process.env, DATABASE_URL: databaseUrl, REDIS_URL: redisUrl, LOG_LEVEL: 'warn' },
    timeout: 60_000,
  });
  return stdout.trim().split('\n');
}

describe('order-points example', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase(inject('databaseUrl'));
  });
  afterAll(async () => db.drop());

  it.skipIf(!hasRedis)(
    'awards points and notifies once per paid order, auto-cancels the unpaid ones, and reruns cleanly',
    async () => {
      for (let runs = 0; runs < 2; runs++) {
        const lines = await runExample(db.url, REDIS_URL);
        expect(lines).toEqual([
          'PostgreSQL: env',
          expect.stringMatching(/^Redis: .+, notifications use the weak check$/),
          'close timers: 20 set, 4 fired, 16 cancelled by payment',
          'orders 20, paid 16, auto-cancelled 4, points awarded 16 (duplicates suppressed 3), ' +
            'notifications sent 16 (duplicates suppressed 3), producer dedup: 1 retried request wrote nothing',
          'checks: no paid order cancelled, no unpaid order with points, one points row per paid order',
        ]);
      }
    },
  );

  it('runs without the weak check when Redis cannot be reached, and says so', async () => {
    // Port 1 refuses connections at once.
    const lines = await runExample(db.url, 'redis://127.0.0.1:1');
    expect(lines).toEqual([
      'PostgreSQL: env',
      expect.stringMatching(
        /^Redis: not reachable at 127\.0\.0\.1:1 \(.+\); notifications run WITHOUT the weak check/,
      ),
      'close timers: 20 set, 4 fired, 16 cancelled by payment',
      'orders 20, paid 16, auto-cancelled 4, points awarded 16 (duplicates suppressed 3), ' +
        'notifications sent 19 (no weak check: 3 duplicates sent), producer dedup: 1 retried request wrote nothing',
      'checks: no paid order cancelled, no unpaid order with points, one points row per paid order',
    ]);
  });
});
