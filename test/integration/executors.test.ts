import { CamelCasePlugin, Kysely, PostgresDialect, sql, type Generated } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, PublishResult, Queryable } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

/** Any message id: a bigint as a decimal string. */
const anId: unknown = expect.stringMatching(/^\d+$/);

interface Database {
  marks: { id: Generated<number>; note: string };
}

const KINDS = [
  'Pool',
  'PoolClient inside BEGIN/COMMIT',
  'Client',
  'Kysely instance',
  'Kysely Transaction',
  'query(text, values) object returning rows, inside BEGIN/COMMIT',
] as const;
type Kind = (typeof KINDS)[number];

describe('publish and publishMany with every kind of db', () => {
  let t: OutboxTestContext;
  let outbox: Outbox;
  let client: pg.Client;
  let kyselyPool: pg.Pool;
  let kysely: Kysely<Database>;
  let topicSeq = 0;
  /** A topic no other test uses, so counts by topic are exact. */
  const freshTopic = () => `exec.t${++topicSeq}`;
  const messagesOf = (topic: string) =>
    count(t.pool, 'SELECT count(*) AS n FROM outbox.messages WHERE topic = $1', [topic]);
  /** Backends of this test file's database that wait for a lock. */
  const lockWaiters = () =>
    count(
      t.pool,
      `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
    );

  async function withDb<T>(kind: Kind, fn: (db: Queryable) => Promise<T>): Promise<T> {
    switch (kind) {
      case 'Pool':
        return fn(t.pool);
      case 'Client':
        return fn(client);
      case 'Kysely instance':
        return fn(kysely);
      case 'Kysely Transaction':
        return kysely.transaction().execute((trx) => fn(trx));
      case 'query(text, values) object returning rows, inside BEGIN/COMMIT':
      case 'PoolClient inside BEGIN/COMMIT': {
        const c = await t.pool.connect();
        // Any driver with pg's query(text, values): this one returns the rows array itself, not { rows }.
        const lent: Queryable =
          kind === 'PoolClient inside BEGIN/COMMIT'
            ? c
            : {
                query: (text: string, values?: unknown[]) =>
                  c.query<Record<string, unknown>>(text, values).then((r) => r.rows),
              };
        try {
          await c.query('BEGIN');
          const result = await fn(lent);
          await c.query('COMMIT');
          return result;
        } finally {
          await c.query('ROLLBACK').catch(() => undefined);
          c.release();
        }
      }
    }
  }

  beforeAll(async () => {
    t = await setupOutboxTest();
    outbox = t.outbox();
    await t.pool.query('CREATE TABLE marks (id serial PRIMARY KEY, note text NOT NULL)');
    client = new pg.Client({ connectionString: t.db.url });
    await client.connect();
    kyselyPool = new pg.Pool({ connectionString: t.db.url, max: 4 });
    kysely = new Kysely<Database>({ dialect: new PostgresDialect({ pool: kyselyPool }) });
  });
  afterAll(async () => {
    await client.end();
    await kysely.destroy();
    await t.close();
  });

  describe.each(KINDS)('with a %s', (kind) => {
    it('publish writes one message with its topic, key, payload and headers', async () => {
      const topic = freshTopic();
      const result = await withDb(kind, (db) =>
        outbox.publish(db, topic, { kind, n: 1 }, { key: 'order-1', headers: { trace: 't-1' } }),
      );
      expect(result).toEqual({ id: anId, duplicate: false });
      const { rows } = await t.pool.query(
        'SELECT topic, key, payload, headers, deliver_at, dedup_key FROM outbox.messages WHERE id = $1',
        [result.id],
      );
      expect(rows).toEqual([
        {
          topic,
          key: 'order-1',
          payload: { kind, n: 1 },
          headers: { trace: 't-1' },
          deliver_at: null,
          dedup_key: null,
        },
      ]);
    });

    it('publishMany writes every message and returns their ids in input order', async () => {
      const topic = freshTopic();
      const results = await withDb(kind, (db) =>
        outbox.publishMany(
          db,
          [0, 1, 2, 3, 4].map((i) => ({ topic, payload: { i }, key: i % 2 === 0 ? `k${i}` : undefined })),
        ),
      );
      expect(results.map((r) => r.duplicate)).toEqual([false, false, false, false, false]);
      const { rows } = await t.pool.query<{ id: string; i: number; key: string | null }>(
        `SELECT id, (payload->>'i')::int AS i, key FROM outbox.messages WHERE topic = $1 ORDER BY id`,
        [topic],
      );
      expect(rows.map((r) => r.id)).toEqual(results.map((r) => r.id));
      expect(rows.map((r) => [r.i, r.key])).toEqual([
        [0, 'k0'],
        [1, null],
        [2, 'k2'],
        [3, null],
        [4, 'k4'],
      ]);
    });

    it('publish with a (topic, dedupKey) that exists returns the first id with duplicate: true and writes nothing', async () => {
      const topic = freshTopic();
      const first = await withDb(kind, (db) =>
        outbox.publish(db, topic, { v: 1 }, { dedupKey: 'payment-7' }),
      );
      const second = await withDb(kind, (db) =>
        outbox.publish(db, topic, { v: 2 }, { dedupKey: 'payment-7' }),
      );
      expect(second).toEqual({ id: first.id, duplicate: true });
      expect(await messagesOf(topic)).toBe(1);
      const { rows } = await t.pool.query('SELECT payload FROM outbox.messages WHERE id = $1', [first.id]);
      expect(rows).toEqual([{ payload: { v: 1 } }]);
    });
  });

  describe('transactions', () => {
    it('writes nothing when the PoolClient’s transaction rolls back, and nothing is visible before COMMIT', async () => {
      const topic = freshTopic();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        await outbox.publish(c, topic, { n: 1 });
        await outbox.publishMany(c, [
          { topic, payload: { n: 2 } },
          { topic, payload: { n: 3 } },
        ]);
        const inside = await c.query('SELECT count(*)::int AS n FROM outbox.messages WHERE topic = $1', [
          topic,
        ]);
        expect(inside.rows).toEqual([{ n: 3 }]);
        expect(await messagesOf(topic)).toBe(0);
        await c.query('ROLLBACK');
      } finally {
        c.release();
      }
      expect(await messagesOf(topic)).toBe(0);
    });

    it('writes the message when the PoolClient’s transaction commits', async () => {
      const topic = freshTopic();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        await outbox.publish(c, topic, { n: 1 });
        expect(await messagesOf(topic)).toBe(0);
        await c.query('COMMIT');
      } finally {
        c.release();
      }
      expect(await messagesOf(topic)).toBe(1);
    });

    it('writes nothing when a pg Client’s own BEGIN is rolled back', async () => {
      const topic = freshTopic();
      await client.query('BEGIN');
      await outbox.publish(client, topic, {});
      await client.query('ROLLBACK');
      expect(await messagesOf(topic)).toBe(0);
    });

    it('commits the message with the business row of a Kysely Transaction', async () => {
      const topic = freshTopic();
      await kysely.transaction().execute(async (trx) => {
        await trx.insertInto('marks').values({ note: topic }).execute();
        await outbox.publish(trx, topic, { n: 1 });
        await outbox.publishMany(trx, [{ topic, payload: { n: 2 } }]);
      });
      expect(await messagesOf(topic)).toBe(2);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM marks WHERE note = $1', [topic])).toBe(1);
    });

    it('rolls the message back with the business row when a Kysely Transaction throws', async () => {
      const topic = freshTopic();
      const failure = new Error('business rule failed');
      await expect(
        kysely.transaction().execute(async (trx) => {
          await trx.insertInto('marks').values({ note: topic }).execute();
          await outbox.publish(trx, topic, { n: 1 });
          await outbox.publishMany(trx, [{ topic, payload: { n: 2 } }]);
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(await messagesOf(topic)).toBe(0);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM marks WHERE note = $1', [topic])).toBe(0);
    });

    it('publishes on the Kysely Transaction’s own connection (its uncommitted message is visible only there)', async () => {
      const topic = freshTopic();
      await kysely.transaction().execute(async (trx) => {
        await outbox.publish(trx, topic, {});
        const inside = await sql<{
          n: string;
        }>`SELECT count(*) AS n FROM outbox.messages WHERE topic = ${topic}`.execute(trx);
        expect(inside.rows).toEqual([{ n: '1' }]);
        expect(await messagesOf(topic)).toBe(0);
      });
      expect(await messagesOf(topic)).toBe(1);
    });
  });

  describe('publishMany order and dedup', () => {
    it('returns ids in input order when rows with and without a dedupKey are interleaved', async () => {
      const topic = freshTopic();
      const input = Array.from({ length: 30 }, (_, i) => ({
        topic,
        payload: { i },
        dedupKey: i % 3 === 0 ? `d${i}` : undefined,
      }));
      const results = await outbox.publishMany(t.pool, input);
      const { rows } = await t.pool.query<{ id: string; i: number }>(
        `SELECT id, (payload->>'i')::int AS i FROM outbox.messages WHERE topic = $1`,
        [topic],
      );
      const indexById = new Map(rows.map((r) => [r.id, r.i]));
      expect(results.map((r) => indexById.get(r.id))).toEqual(input.map((_, i) => i));
      const ids = results.map((r) => BigInt(r.id));
      expect(ids).toEqual([...ids].sort((a, b) => (a < b ? -1 : 1)));
    });

    it('treats a repeated (topic, dedupKey) inside one call, or one already stored, as a duplicate of the first', async () => {
      const topic = freshTopic();
      const other = freshTopic();
      const stored = await outbox.publish(t.pool, topic, { stored: true }, { dedupKey: 'pre' });
      const results = await outbox.publishMany(t.pool, [
        { topic, payload: { i: 0 }, dedupKey: 'k1' },
        { topic, payload: { i: 1 } },
        { topic, payload: { i: 2 }, dedupKey: 'k1' },
        { topic, payload: { i: 3 }, dedupKey: 'pre' },
        { topic: other, payload: { i: 4 }, dedupKey: 'k1' },
        { topic, payload: { i: 5 }, dedupKey: 'k2' },
        { topic, payload: { i: 6 }, dedupKey: 'k2' },
      ]);
      const [r0, r1, r2, r3, r4, r5, r6] = results as [
        PublishResult,
        PublishResult,
        PublishResult,
        PublishResult,
        PublishResult,
        PublishResult,
        PublishResult,
      ];
      expect(results.map((r) => r.duplicate)).toEqual([false, false, true, true, false, false, true]);
      expect(r2.id).toBe(r0.id);
      expect(r3.id).toBe(stored.id);
      expect(r6.id).toBe(r5.id);
      expect(new Set([stored.id, r0.id, r1.id, r4.id, r5.id]).size).toBe(5);
      const { rows } = await t.pool.query<{ i: number | null }>(
        `SELECT (payload->>'i')::int AS i FROM outbox.messages WHERE topic = ANY ($1::text[]) ORDER BY id`,
        [[topic, other]],
      );
      expect(rows.map((r) => r.i)).toEqual([null, 0, 1, 4, 5]);
    });

    it('publishes the same dedupKey twice in one transaction as one message', async () => {
      const topic = freshTopic();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        const a = await outbox.publish(c, topic, { n: 1 }, { dedupKey: 'same-tx' });
        const [b] = await outbox.publishMany(c, [{ topic, payload: { n: 2 }, dedupKey: 'same-tx' }]);
        expect(b).toEqual({ id: a.id, duplicate: true });
        await c.query('COMMIT');
      } finally {
        c.release();
      }
      expect(await messagesOf(topic)).toBe(1);
    });
  });

  describe('concurrent publishes with one dedupKey', () => {
    /**
     * Eight connections in parallel transactions publish the same (topic, dedupKey). The first one's insert is
     * held uncommitted until the seven others are seen waiting on it in pg_stat_activity, then it ends with
     * `firstEnds`. Each other connection commits as soon as its own publish returns.
     */
    async function race(firstEnds: 'COMMIT' | 'ROLLBACK', many: boolean) {
      const topic = freshTopic();
      const publishOne = (db: pg.PoolClient, from: number) =>
        many
          ? outbox
              .publishMany(db, [{ topic, payload: { from }, dedupKey: 'race' }])
              .then((r) => r[0] as PublishResult)
          : outbox.publish(db, topic, { from }, { dedupKey: 'race' });
      const clients = await Promise.all(Array.from({ length: 8 }, () => t.pool.connect()));
      const [first, ...others] = clients as [pg.PoolClient, ...pg.PoolClient[]];
      try {
        await Promise.all(clients.map((c) => c.query('BEGIN')));
        const firstResult = await publishOne(first, 0);
        const pending = others.map((c, i) =>
          publishOne(c, i + 1).then(async (r) => {
            await c.query('COMMIT');
            return r;
          }),
        );
        for (const p of pending) void p.catch(() => undefined);
        await waitFor(
          'seven publishers wait on the first one’s insert',
          async () => (await lockWaiters()) === 7,
        );
        await first.query(firstEnds);
        return { topic, firstResult, results: await Promise.all(pending) };
      } finally {
        for (const c of clients) {
          await c.query('ROLLBACK').catch(() => undefined);
          c.release();
        }
      }
    }

    it.each([
      ['publish', false],
      ['publishMany', true],
    ])('%s from 8 connections yields exactly one message when the first commits', async (_, many) => {
      const { topic, firstResult, results } = await race('COMMIT', many);
      expect(firstResult.duplicate).toBe(false);
      expect(results).toEqual(Array.from({ length: 7 }, () => ({ id: firstResult.id, duplicate: true })));
      expect(await messagesOf(topic)).toBe(1);
      const { rows } = await t.pool.query('SELECT payload FROM outbox.messages WHERE topic = $1', [topic]);
      expect(rows).toEqual([{ payload: { from: 0 } }]);
    });

    it.each([
      ['publish', false],
      ['publishMany', true],
    ])('%s from 8 connections yields exactly one message when the first rolls back', async (_, many) => {
      const { topic, firstResult, results } = await race('ROLLBACK', many);
      expect(results.filter((r) => !r.duplicate)).toHaveLength(1);
      const winner = results.find((r) => !r.duplicate);
      expect(new Set(results.map((r) => r.id))).toEqual(new Set([winner?.id]));
      expect(winner?.id).not.toBe(firstResult.id);
      expect(await messagesOf(topic)).toBe(1);
      const { rows } = await t.pool.query<{ id: string }>('SELECT id FROM outbox.messages WHERE topic = $1', [
        topic,
      ]);
      expect(rows).toEqual([{ id: winner?.id }]);
    });
  });

  describe('due time', () => {
    // delayMs counts from the publish call (clock_timestamp()): after the transaction's start (now()), and before
    // this check runs.
    const dueCheck = `SELECT deliver_at >= now() + $2::bigint * interval '1 millisecond'
                         AND deliver_at <= clock_timestamp() + $2::bigint * interval '1 millisecond' AS ok
                      FROM outbox.messages WHERE id = $1`;

    it('sets deliver_at to the database’s clock at the publish call + delayMs, in the caller’s transaction', async () => {
      const topic = freshTopic();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        const a = await outbox.publish(c, topic, {}, { delayMs: 60_000 });
        const [b, z] = await outbox.publishMany(c, [
          { topic, payload: {}, delayMs: 1_500 },
          { topic, payload: {}, delayMs: 0 },
        ]);
        expect((await c.query(dueCheck, [a.id, 60_000])).rows).toEqual([{ ok: true }]);
        expect((await c.query(dueCheck, [b?.id, 1_500])).rows).toEqual([{ ok: true }]);
        expect((await c.query(dueCheck, [z?.id, 0])).rows).toEqual([{ ok: true }]);
        await c.query('COMMIT');
      } finally {
        c.release();
      }
    });

    it('sets deliver_at from delayMs by Postgres’s clock when publishing on a Pool', async () => {
      const topic = freshTopic();
      const a = await outbox.publish(t.pool, topic, {}, { delayMs: 86_400_000 });
      expect(
        await count(
          t.pool,
          `SELECT count(*) AS n FROM outbox.messages
           WHERE id = $1 AND deliver_at >= created_at + interval '1 day'
             AND deliver_at <= clock_timestamp() + interval '1 day'`,
          [a.id],
        ),
      ).toBe(1);
    });

    it('stores deliverAt exactly, in the future or the past, and NULL without a due time', async () => {
      const topic = freshTopic();
      const future = new Date(Date.now() + 3_600_000);
      const past = new Date('2001-02-03T04:05:06.789Z');
      const a = await outbox.publish(t.pool, topic, {}, { deliverAt: future });
      const [b, c] = await outbox.publishMany(t.pool, [
        { topic, payload: {}, deliverAt: past },
        { topic, payload: {} },
      ]);
      const { rows } = await t.pool.query<{ id: string; deliver_at: Date | null }>(
        'SELECT id, deliver_at FROM outbox.messages WHERE topic = $1 ORDER BY id',
        [topic],
      );
      expect(rows).toEqual([
        { id: a.id, deliver_at: future },
        { id: b?.id, deliver_at: past },
        { id: c?.id, deliver_at: null },
      ]);
    });
  });

  describe('Kysely with a result plugin', () => {
    /** A correct publish takes milliseconds; a call that has not settled by the deadline is reported as such. */
    async function settleWithin<T>(call: Promise<T>, ms: number): Promise<T | 'did not settle'> {
      call.catch(() => undefined);
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<'did not settle'>((resolve) => {
        timer = setTimeout(() => resolve('did not settle'), ms);
      });
      try {
        return await Promise.race([call, deadline]);
      } finally {
        clearTimeout(timer);
      }
    }

    // db/executor.ts kyselyExecutor() runs statements through db.executeQuery(), which applies the caller's
    // plugins' transformResult: CamelCasePlugin renames the column dedup_key to dedupKey. producer/publish.ts
    // reads r.dedup_key / f.dedup_key, gets undefined, treats every inserted row as a conflict, and its
    // `while (pending.length > 0)` / `for (;;)` loops never end: publishMany re-inserts the batch forever (about
    // a thousand rows a second here), and publish with an existing dedupKey spins on INSERT ... DO NOTHING.
    // Kysely's CamelCasePlugin is common; any plugin that renames result columns breaks publish the same way.
    it('publishMany and a duplicate publish work through a Kysely instance with CamelCasePlugin', async () => {
      const topic = freshTopic();
      const camelPool = new pg.Pool({ connectionString: t.db.url, max: 2 });
      const camel = new Kysely<Database>({
        dialect: new PostgresDialect({ pool: camelPool }),
        plugins: [new CamelCasePlugin()],
      });
      try {
        const first = await outbox.publish(camel, topic, { n: 0 }, { dedupKey: 'camel' });
        const [many, duplicate] = await Promise.all([
          settleWithin(outbox.publishMany(camel, [{ topic, payload: { n: 1 } }]), 10_000),
          settleWithin(outbox.publish(camel, topic, { n: 2 }, { dedupKey: 'camel' }), 10_000),
        ]);
        // Destroying the instance makes a call that is still looping fail on its next statement.
        await camel.destroy();
        expect(await messagesOf(topic)).toBe(2);
        expect(many).toEqual([{ id: anId, duplicate: false }]);
        expect(duplicate).toEqual({ id: first.id, duplicate: true });
      } finally {
        await camel.destroy().catch(() => undefined);
      }
    });

    it('publishes on the caller’s connection through a Kysely Transaction with CamelCasePlugin', async () => {
      const topic = freshTopic();
      const camelPool = new pg.Pool({ connectionString: t.db.url, max: 2 });
      const camel = new Kysely<Database>({
        dialect: new PostgresDialect({ pool: camelPool }),
        plugins: [new CamelCasePlugin()],
      });
      try {
        const rolledBack = new Error('roll back');
        await expect(
          camel.transaction().execute(async (trx) => {
            await outbox.publishMany(trx, [{ topic, payload: { n: 1 }, dedupKey: 'tx-camel' }]);
            throw rolledBack;
          }),
        ).rejects.toBe(rolledBack);
        expect(await messagesOf(topic)).toBe(0);
        const results = await camel.transaction().execute(async (trx) => {
          const many = await settleWithin(
            outbox.publishMany(trx, [
              { topic, payload: { n: 1 }, dedupKey: 'tx-camel' },
              { topic, payload: { n: 2 } },
            ]),
            10_000,
          );
          const again = await settleWithin(
            outbox.publish(trx, topic, { n: 3 }, { dedupKey: 'tx-camel' }),
            10_000,
          );
          return { many, again };
        });
        expect(results.many).toEqual([
          { id: anId, duplicate: false },
          { id: anId, duplicate: false },
        ]);
        expect(results.again).toEqual({ id: (results.many as PublishResult[])[0]?.id, duplicate: true });
        expect(await messagesOf(topic)).toBe(2);
      } finally {
        await camel.destroy();
      }
    });
  });
});
