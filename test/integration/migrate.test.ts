import { readdir } from 'node:fs/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox, OutboxError, type OutboxMessage } from '../../src/index.js';
import { topicFilter } from '../../src/topics.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const migrationFiles = async () =>
  (await readdir(new URL('../../migrations', import.meta.url))).filter((f) => f.endsWith('.sql')).length;

describe('migrate', () => {
  let t: OutboxTestContext;
  /** Tables and views of a schema, with how often each name occurs. */
  const relationsOf = async (schema: string) => {
    const { rows } = await t.pool.query<{ name: string; kind: string }>(
      `SELECT c.relname AS name, c.relkind::text AS kind
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'p')
       ORDER BY 1`,
      [schema],
    );
    return rows;
  };
  const appliedMigrations = (schema: string) =>
    count(t.pool, `SELECT count(*) AS n FROM "${schema}".pg_outbox_migrations`);

  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('is idempotent: migrating an up-to-date schema twice more changes nothing', async () => {
    const before = await relationsOf('outbox');
    const outbox = t.outbox();
    await outbox.migrate();
    await outbox.migrate();
    expect(await relationsOf('outbox')).toEqual(before);
    expect(before.map((r) => r.name)).toEqual(
      expect.arrayContaining(['messages', 'deliveries', 'subscriptions', 'processed', 'relay_state']),
    );
    expect(await appliedMigrations('outbox')).toBe(await migrationFiles());
    expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.relay_state')).toBe(1);
  });

  it('lets 6 Outbox instances on 6 pools migrate one fresh schema at once: all succeed, each table exists once', async () => {
    const pools = Array.from({ length: 6 }, () => new pg.Pool({ connectionString: t.db.url, max: 1 }));
    try {
      const outboxes = pools.map((pool) =>
        createOutbox({ pool, schema: 'fresh_concurrent', logger: testLogger }),
      );
      const results = await Promise.allSettled(outboxes.map((o) => o.migrate()));
      expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
    const fresh = await relationsOf('fresh_concurrent');
    const reference = await relationsOf('outbox');
    expect(fresh).toEqual(reference);
    expect(new Set(fresh.map((r) => r.name)).size).toBe(fresh.length);
    expect(await appliedMigrations('fresh_concurrent')).toBe(await migrationFiles());
    expect(await count(t.pool, 'SELECT count(*) AS n FROM fresh_concurrent.relay_state')).toBe(1);
  });

  it('migrates two different fresh schemas at once without either blocking or breaking the other', async () => {
    const outboxes = ['fresh_a', 'fresh_b', 'fresh_a', 'fresh_b'].map((schema) => t.outbox({ schema }));
    await Promise.all(outboxes.map((o) => o.migrate()));
    const reference = await relationsOf('outbox');
    expect(await relationsOf('fresh_a')).toEqual(reference);
    expect(await relationsOf('fresh_b')).toEqual(reference);
  });

  it('fails with OUTBOX_MIGRATION_FAILED and leaves none of its tables when the schema has a clashing table', async () => {
    await t.pool.query('CREATE SCHEMA clash; CREATE TABLE clash.processed (note text)');
    const error = await t
      .outbox({ schema: 'clash' })
      .migrate()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(OutboxError);
    expect(error).toMatchObject({ code: 'OUTBOX_MIGRATION_FAILED', value: 'clash' });
    const left = (await relationsOf('clash')).map((r) => r.name);
    expect(left.filter((name) => name !== 'pg_outbox_migrations')).toEqual(['processed']);
    expect(await count(t.pool, 'SELECT count(*) AS n FROM clash.pg_outbox_migrations')).toBe(0);
  });

  describe('a custom schema', () => {
    it('works end to end in "billing_outbox": publish, relay, consume, with topic patterns', async () => {
      const billing = t.outbox({ schema: 'billing_outbox' });
      await billing.migrate();
      expect(
        await count(t.pool, `SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'billing_outbox'`),
      ).toBeGreaterThan(0);
      const seen: Record<'one' | 'many', string[]> = { one: [], many: [] };
      await billing.declareSubscription('one-level', { topics: ['invoice.*'] });
      await billing.declareSubscription('any-level', { topics: ['invoice.#'] });
      billing.subscribe('one-level', { topics: ['invoice.*'] }, (m: OutboxMessage) => {
        seen.one.push(m.topic);
      });
      billing.subscribe('any-level', { topics: ['invoice.#'] }, (m: OutboxMessage) => {
        seen.many.push(m.topic);
      });
      await billing.start();
      const outboxBefore = await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages');

      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        await billing.publish(client, 'invoice.sent', { invoice: 1 });
        await billing.publishMany(client, [
          { topic: 'invoice.sent.reminder', payload: { invoice: 1 } },
          { topic: 'receipt.sent', payload: { invoice: 1 } },
        ]);
        await client.query('COMMIT');
      } finally {
        client.release();
      }

      await waitFor(
        'both subscriptions handled their messages',
        () => seen.one.length === 1 && seen.many.length === 2,
      );
      expect(seen.one).toEqual(['invoice.sent']);
      expect([...seen.many].sort()).toEqual(['invoice.sent', 'invoice.sent.reminder']);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM billing_outbox.messages')).toBe(3);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages')).toBe(outboxBefore);
      await billing.stop();
    });

    it('keeps two schemas in one database apart: each relay and consumer sees only its own messages', async () => {
      const a = t.outbox({ schema: 'apart_a' });
      const b = t.outbox({ schema: 'apart_b' });
      await Promise.all([a.migrate(), b.migrate()]);
      const seen: Record<'a' | 'b', unknown[]> = { a: [], b: [] };
      for (const [name, o] of [
        ['a', a],
        ['b', b],
      ] as const) {
        // The same subscription name and a catch-all filter in both schemas.
        await o.declareSubscription('audit', { topics: ['#'] });
        o.subscribe('audit', { topics: ['#'] }, (m: OutboxMessage) => {
          seen[name].push(m.payload);
        });
      }
      await Promise.all([a.start(), b.start()]);

      await a.publish(t.pool, 'order.paid', { from: 'a' });
      await b.publishMany(t.pool, [
        { topic: 'order.paid', payload: { from: 'b', n: 1 } },
        { topic: 'invoice.sent', payload: { from: 'b', n: 2 } },
      ]);

      await waitFor('both schemas delivered', () => seen.a.length === 1 && seen.b.length === 2);
      expect(seen.a).toEqual([{ from: 'a' }]);
      expect(seen.b).toEqual(
        expect.arrayContaining([
          { from: 'b', n: 1 },
          { from: 'b', n: 2 },
        ]),
      );
      const deliveries = (schema: string) =>
        count(t.pool, `SELECT count(*) AS n FROM "${schema}".message_deliveries WHERE state = 'done'`);
      await waitFor(
        'acks recorded in both schemas',
        async () => (await deliveries('apart_a')) === 1 && (await deliveries('apart_b')) === 2,
      );
      // Nothing leaked after the acks either.
      expect(seen.a).toHaveLength(1);
      expect(seen.b).toHaveLength(2);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM apart_a.messages')).toBe(1);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM apart_b.messages')).toBe(2);
      await Promise.all([a.stop(), b.stop()]);
    });
  });

  it('evaluates compiled topic patterns in Postgres (~) exactly as JavaScript RegExp does', async () => {
    const cases: [string[], string][] = [];
    const filters = [['order.*'], ['order.#'], ['*.paid'], ['a.*.c'], ['*'], ['#'], ['order.*', 'user.#']];
    const topics = [
      'order',
      'order.paid',
      'order.paid.late',
      'orders.paid',
      'my.order.paid',
      'a.b.c',
      'a.c',
      'a.b.b.c',
      'user.a.b',
      'paid',
      'Order.Paid',
      'order.pa-id_9',
    ];
    for (const f of filters) for (const topic of topics) cases.push([f, topic]);
    const { rows } = await t.pool.query<{ i: number; matches: boolean }>(
      `SELECT c.i::int, c.topic ~ c.pattern AS matches
       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS c(pattern, topic, i)
       ORDER BY c.i`,
      [cases.map(([f]) => topicFilter(f).pattern), cases.map(([, topic]) => topic)],
    );
    const js = cases.map(([f, topic]) => new RegExp(topicFilter(f).pattern ?? '$^').test(topic));
    expect(rows.map((r) => r.matches)).toEqual(js);
    // Spot checks, so that both engines agreeing on a wrong answer would fail too.
    const at = (f: string[], topic: string) =>
      rows[cases.findIndex(([cf, ct]) => cf === f && ct === topic)]?.matches;
    expect(at(filters[0] ?? [], 'order.paid')).toBe(true);
    expect(at(filters[0] ?? [], 'order.paid.late')).toBe(false);
    expect(at(filters[1] ?? [], 'order.paid.late')).toBe(true);
    expect(at(filters[1] ?? [], 'order')).toBe(false);
    expect(at(filters[2] ?? [], 'my.order.paid')).toBe(false);
    expect(at(filters[3] ?? [], 'a.b.b.c')).toBe(false);
    expect(at(filters[6] ?? [], 'user.a.b')).toBe(true);
  });
});
