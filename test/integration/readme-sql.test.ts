import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/** The ```sql blocks of the README's "Audit with SQL" section, by their first line (a `-- what it does` comment). */
async function readmeRecipes(): Promise<Map<string, string>> {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  const start = readme.indexOf('\n## Audit with SQL\n');
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end);
  const recipes = new Map<string, string>();
  for (const match of section.matchAll(/```sql\n([\s\S]*?)```/g)) {
    const sql = match[1] ?? '';
    recipes.set(sql.split('\n')[0] ?? '', sql);
  }
  return recipes;
}

/**
 * The README's audit recipes, run as written against a scripted history in schema `outbox`: 43 messages; message 42
 * (order.paid, key order-42) fails once in `points` and then succeeds, dies in `ledger` after two failures, and is
 * done at once in `mailer`; message 43 (order.shipped, key order-42) goes to `mailer` and `ledger`.
 */
describe('README: Audit with SQL', () => {
  let t: OutboxTestContext;
  let recipes: Map<string, string>;
  const run = async (comment: string) => {
    const sql = recipes.get(`-- ${comment}`);
    if (sql === undefined) throw new Error(`the README has no recipe starting "-- ${comment}"`);
    return (await t.pool.query<Record<string, unknown>>(sql)).rows;
  };

  beforeAll(async () => {
    recipes = await readmeRecipes();
    t = await setupOutboxTest();
    const outbox = t.outbox({ instance: 'readme', relay: { pollIntervalMs: 5 } });
    await outbox.declareSubscription('points', { topics: ['order.paid'] });
    await outbox.declareSubscription('ledger', { topics: ['order.#'] });
    await outbox.declareSubscription('mailer', { topics: ['order.*'] });
    await outbox.publishMany(
      t.pool,
      Array.from({ length: 41 }, (_, i) => ({ topic: 'order.created', payload: { i }, key: `order-${i}` })),
    );
    const paid = await outbox.publish(t.pool, 'order.paid', { order: 42 }, { key: 'order-42' });
    expect(paid.id).toBe('42');
    await outbox.publish(t.pool, 'order.shipped', { order: 42 }, { key: 'order-42' });
    let pointsTries = 0;
    const fast = { retry: { minDelayMs: 0, maxDelayMs: 0 }, pollIntervalMs: 20 };
    outbox.subscribe('points', { topics: ['order.paid'], ...fast }, (message) => {
      if (message.id === '42' && ++pointsTries === 1)
        throw new Error('points service unavailable\n  at stack');
    });
    outbox.subscribe('ledger', { topics: ['order.#'], maxAttempts: 2, ...fast }, (message) => {
      if (message.id === '42') throw new Error('ledger rejected the order\n  at stack');
    });
    outbox.subscribe('mailer', { topics: ['order.*'], ...fast }, () => {});
    await outbox.start();
    // One statement, one snapshot: every one of the 87 deliveries finished (two counts read at two moments could
    // see an empty deliveries table before the relay ran and all 87 pending after it).
    await waitFor(
      'every delivery finished',
      async () =>
        (await count(
          t.pool,
          `SELECT count(*) AS n FROM outbox.audit_deliveries WHERE status IN ('done', 'dead')`,
        )) ===
        1 + 43 + 43,
    );
    await outbox.stop();
    // "yesterday": the points failure happened at noon of the day before.
    await t.pool.query(
      `UPDATE outbox.delivery_failures SET failed_at = date_trunc('day', now()) - interval '12 hours'
       WHERE subscription_id = (SELECT id FROM outbox.subscriptions WHERE name = 'points')`,
    );
  });
  afterAll(async () => t.close());

  it("shows a message's journey", async () => {
    const rows = await run(
      "a message's journey: where message 42 went, how often it was tried, by whom, and how it ended",
    );
    expect(rows.map((r) => [r.subscription, r.status, r.attempts])).toEqual([
      ['ledger', 'dead', 2],
      ['mailer', 'done', 1],
      ['points', 'done', 2],
    ]);
    for (const row of rows) expect(row.consumer).toMatch(/^[^:]+:\d+:readme$/);
    expect(rows[0]?.last_error).toContain('ledger rejected the order');
  });

  it('lists every failed attempt of a message', async () => {
    const rows = await run('every failed attempt of message 42, oldest first');
    expect(rows.map((r) => [r.subscription, r.attempt])).toEqual([
      ['points', 1],
      ['ledger', 1],
      ['ledger', 2],
    ]);
    expect(String(rows[1]?.error)).toContain('ledger rejected the order');
  });

  it("shows a key's history", async () => {
    const rows = await run(
      "a key's history: every message of order-42 and what each subscription did with it",
    );
    expect(rows.map((r) => [r.message_id, r.subscription, r.status])).toEqual([
      ['42', 'ledger', 'dead'],
      ['42', 'mailer', 'done'],
      ['42', 'points', 'done'],
      ['43', 'ledger', 'done'],
      ['43', 'mailer', 'done'],
    ]);
  });

  it("finds yesterday's failures of a subscription", async () => {
    const rows = await run('failures of the points subscription yesterday');
    expect(rows.map((r) => [r.message_id, r.key, r.attempt])).toEqual([['42', 'order-42', 1]]);
  });

  it('shows the lag per subscription', async () => {
    const rows = await run('lag per subscription, the most behind first');
    expect(rows.map((r) => [r.subscription, r.pending, r.dead, r.done_last_hour, r.relay_backlog])).toEqual([
      ['ledger', '0', '1', '42', '0'],
      ['mailer', '0', '0', '43', '0'],
      ['points', '0', '0', '1', '0'],
    ]);
  });

  it('groups dead letters by error', async () => {
    const rows = await run('dead letters grouped by error (its first line)');
    expect(rows.map((r) => [r.subscription, r.error, r.dead])).toEqual([
      ['ledger', 'Error: ledger rejected the order', '1'],
    ]);
  });

  it('counts the throughput per topic per minute', async () => {
    const rows = await run(
      'throughput per topic per minute over the last hour: deliveries done, per subscription',
    );
    const done = (topic: string, subscription: string) =>
      rows
        .filter((r) => r.topic === topic && r.subscription === subscription)
        .reduce((sum, r) => sum + Number(r.done), 0);
    expect(done('order.created', 'mailer')).toBe(41);
    expect(done('order.created', 'ledger')).toBe(41);
    expect(done('order.paid', 'ledger')).toBe(0);
    expect(done('order.paid', 'points')).toBe(1);
    expect(done('order.shipped', 'ledger')).toBe(1);
  });

  it('runs every recipe of the section (none is left untested)', () => {
    expect(recipes.size).toBe(7);
  });
});
