import { Kysely, PostgresDialect, sql, type QueryExecutorProvider, type Transaction } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OutboxError, type OnceResult, type Outbox, type OutboxMessage } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

interface Database {
  effects: { scope: string; key: string };
}

describe('once: run at most once per (scope, key)', () => {
  let t: OutboxTestContext;
  let outbox: Outbox;
  let kyselyPool: pg.Pool;
  let kysely: Kysely<Database>;
  let seq = 0;
  /** A key no other test uses. */
  const freshKey = () => `key-${++seq}`;
  const recorded = (scope: string, key: string) =>
    count(t.pool, 'SELECT count(*) AS n FROM outbox.processed WHERE scope = $1 AND key = $2', [scope, key]);
  const effects = (scope: string, key: string) =>
    count(t.pool, 'SELECT count(*) AS n FROM effects WHERE scope = $1 AND key = $2', [scope, key]);
  const lockWaiters = () =>
    count(
      t.pool,
      `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
    );
  const insertEffect = (db: pg.ClientBase, scope: string, key: string) =>
    db.query('INSERT INTO effects (scope, key) VALUES ($1, $2)', [scope, key]);

  beforeAll(async () => {
    t = await setupOutboxTest();
    outbox = t.outbox();
    await t.pool.query('CREATE TABLE effects (scope text NOT NULL, key text NOT NULL)');
    kyselyPool = new pg.Pool({ connectionString: t.db.url, max: 4 });
    kysely = new Kysely<Database>({ dialect: new PostgresDialect({ pool: kyselyPool }) });
  });
  afterAll(async () => {
    await kysely.destroy();
    await t.close();
  });

  describe('with a Pool (a transaction of its own)', () => {
    it('runs fn once, records the key with its effect, and answers { duplicate: true } afterwards', async () => {
      const key = freshKey();
      let runs = 0;
      const fn = async (tx: pg.PoolClient) => {
        runs += 1;
        await insertEffect(tx, 'billing', key);
        return `invoice for ${key}`;
      };
      expect(await outbox.once(t.pool, 'billing', key, fn)).toEqual({
        duplicate: false,
        result: `invoice for ${key}`,
      });
      expect(await outbox.once(t.pool, 'billing', key, fn)).toEqual({ duplicate: true });
      expect(runs).toBe(1);
      expect(await recorded('billing', key)).toBe(1);
      expect(await effects('billing', key)).toBe(1);
    });

    it('hands fn a client inside a transaction that is not yet committed', async () => {
      const key = freshKey();
      await outbox.once(t.pool, 'billing', key, async (tx) => {
        await insertEffect(tx, 'billing', key);
        const { rows } = await tx.query<{ in_tx: boolean }>(
          // An xid is assigned by the first write and kept until the transaction ends.
          `SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS in_tx`,
        );
        expect(rows).toEqual([{ in_tx: true }]);
        expect(await effects('billing', key)).toBe(0);
        expect(await recorded('billing', key)).toBe(0);
      });
      expect(await effects('billing', key)).toBe(1);
    });

    it('keys by scope and key together: the same key in another scope runs again', async () => {
      const key = freshKey();
      const fn = () => Promise.resolve('ran');
      expect(await outbox.once(t.pool, 'billing', key, fn)).toMatchObject({ duplicate: false });
      expect(await outbox.once(t.pool, 'shipping', key, fn)).toMatchObject({ duplicate: false });
      expect(await outbox.once(t.pool, 'billing', key, fn)).toEqual({ duplicate: true });
    });

    it('rolls back the key and fn’s writes when fn throws, so a later call runs fn again', async () => {
      const key = freshKey();
      const failure = new Error('payment provider down');
      await expect(
        outbox.once(t.pool, 'billing', key, async (tx) => {
          await insertEffect(tx, 'billing', key);
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(await recorded('billing', key)).toBe(0);
      expect(await effects('billing', key)).toBe(0);
      expect(await outbox.once(t.pool, 'billing', key, () => Promise.resolve(2))).toEqual({
        duplicate: false,
        result: 2,
      });
      expect(t.pool.totalCount - t.pool.idleCount).toBe(0);
    });
  });

  describe('with a PoolClient inside the caller’s transaction', () => {
    it('runs fn once in the caller’s transaction; the caller’s COMMIT records it', async () => {
      const key = freshKey();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        const first = await outbox.once(c, 'billing', key, async (tx) => {
          expect(tx).toBe(c);
          await insertEffect(tx, 'billing', key);
          return 1;
        });
        const second = await outbox.once(c, 'billing', key, () => Promise.resolve(2));
        expect([first, second]).toEqual([{ duplicate: false, result: 1 }, { duplicate: true }]);
        expect(await recorded('billing', key)).toBe(0);
        await c.query('COMMIT');
      } finally {
        c.release();
      }
      expect(await recorded('billing', key)).toBe(1);
      expect(await effects('billing', key)).toBe(1);
    });

    it('records nothing when the caller rolls back, so the key stays free', async () => {
      const key = freshKey();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        await outbox.once(c, 'billing', key, (tx) => insertEffect(tx, 'billing', key));
        await c.query('ROLLBACK');
      } finally {
        c.release();
      }
      expect(await recorded('billing', key)).toBe(0);
      expect(await effects('billing', key)).toBe(0);
      expect(await outbox.once(t.pool, 'billing', key, () => Promise.resolve('again'))).toMatchObject({
        duplicate: false,
      });
    });

    it('undoes only a throwing fn (savepoint): its key stays unrecorded and the caller’s transaction goes on', async () => {
      const kept = freshKey();
      const failed = freshKey();
      const failure = new Error('fn failed');
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        await insertEffect(c, 'caller', kept);
        await outbox.once(c, 'billing', kept, (tx) => insertEffect(tx, 'billing', kept));
        await expect(
          outbox.once(c, 'billing', failed, async (tx) => {
            await insertEffect(tx, 'billing', failed);
            throw failure;
          }),
        ).rejects.toBe(failure);
        // A failed statement would make every later statement fail with 25P02; these succeed.
        const { rows } = await c.query<{ scope: string; key: string }>(
          `SELECT scope, key FROM outbox.processed WHERE key = ANY ($1::text[])
           UNION ALL SELECT 'effect:' || scope, key FROM effects WHERE key = ANY ($1::text[])
           ORDER BY 1, 2`,
          [[kept, failed]],
        );
        expect(rows).toEqual([
          { scope: 'billing', key: kept },
          { scope: 'effect:billing', key: kept },
          { scope: 'effect:caller', key: kept },
        ]);
        // The failed key is free again inside the same transaction.
        expect(await outbox.once(c, 'billing', failed, () => Promise.resolve('retried'))).toEqual({
          duplicate: false,
          result: 'retried',
        });
        await c.query('COMMIT');
      } finally {
        c.release();
      }
      expect(await recorded('billing', kept)).toBe(1);
      expect(await recorded('billing', failed)).toBe(1);
      expect(await effects('billing', failed)).toBe(0);
    });

    it('undoes a fn whose SQL statement failed and leaves the caller’s transaction usable', async () => {
      const key = freshKey();
      const c = await t.pool.connect();
      try {
        await c.query('BEGIN');
        await expect(outbox.once(c, 'billing', key, (tx) => tx.query('SELECT 1 / 0'))).rejects.toMatchObject({
          code: '22012',
        });
        expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        await c.query('COMMIT');
      } finally {
        c.release();
      }
      expect(await recorded('billing', key)).toBe(0);
    });
  });

  describe('with a client that is not in a transaction', () => {
    it.each(['PoolClient', 'Client'] as const)(
      'rejects a %s outside BEGIN with OUTBOX_NOT_IN_TRANSACTION, runs nothing and records nothing',
      async (kind) => {
        const key = freshKey();
        let c: pg.PoolClient | pg.Client;
        if (kind === 'PoolClient') {
          c = await t.pool.connect();
        } else {
          c = new pg.Client({ connectionString: t.db.url });
          await c.connect();
        }
        let ran = false;
        try {
          const error = await outbox
            .once(c, 'billing', key, () => {
              ran = true;
              return Promise.resolve();
            })
            .then(
              () => undefined,
              (e: unknown) => e,
            );
          expect(error).toBeInstanceOf(OutboxError);
          expect(error).toMatchObject({ code: 'OUTBOX_NOT_IN_TRANSACTION' });
          expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        } finally {
          if ('release' in c) c.release();
          else await c.end();
        }
        expect(ran).toBe(false);
        expect(await recorded('billing', key)).toBe(0);
      },
    );
  });

  describe('with Kysely', () => {
    const kyselyEffect = (trx: QueryExecutorProvider, scope: string, key: string) =>
      sql`INSERT INTO effects (scope, key) VALUES (${scope}, ${key})`.execute(trx);

    it('opens a transaction of its own on a Kysely instance and hands fn a Kysely Transaction', async () => {
      const key = freshKey();
      let runs = 0;
      const fn = async (trx: Transaction<Database>) => {
        runs += 1;
        expect(trx.isTransaction).toBe(true);
        await kyselyEffect(trx, 'kysely', key);
        return 'done';
      };
      expect(await outbox.once(kysely, 'kysely', key, fn)).toEqual({ duplicate: false, result: 'done' });
      expect(await outbox.once(kysely, 'kysely', key, fn)).toEqual({ duplicate: true });
      expect(runs).toBe(1);
      expect(await recorded('kysely', key)).toBe(1);
      expect(await effects('kysely', key)).toBe(1);
    });

    it('rolls back the key and fn’s writes on a Kysely instance when fn throws', async () => {
      const key = freshKey();
      await expect(
        outbox.once(kysely, 'kysely', key, async (trx: Transaction<Database>) => {
          await kyselyEffect(trx, 'kysely', key);
          throw new Error('nope');
        }),
      ).rejects.toThrow('nope');
      expect(await recorded('kysely', key)).toBe(0);
      expect(await effects('kysely', key)).toBe(0);
    });

    it('runs inside the caller’s Kysely Transaction: a throwing fn is undone, the rest commits with the caller', async () => {
      const kept = freshKey();
      const failed = freshKey();
      await kysely.transaction().execute(async (trx) => {
        const first = await outbox.once(trx, 'kysely', kept, async (tx) => {
          expect(tx).toBe(trx);
          await kyselyEffect(tx, 'kysely', kept);
          return 1;
        });
        expect(first).toEqual({ duplicate: false, result: 1 });
        expect(await outbox.once(trx, 'kysely', kept, () => Promise.resolve(2))).toEqual({ duplicate: true });
        await expect(
          outbox.once(trx, 'kysely', failed, async (tx) => {
            await kyselyEffect(tx, 'kysely', failed);
            throw new Error('fn failed');
          }),
        ).rejects.toThrow('fn failed');
        const { rows } = await sql<{
          n: number;
        }>`SELECT count(*)::int AS n FROM effects WHERE key = ${failed}`.execute(trx);
        expect(rows).toEqual([{ n: 0 }]);
        expect(await recorded('kysely', kept)).toBe(0);
      });
      expect(await recorded('kysely', kept)).toBe(1);
      expect(await effects('kysely', kept)).toBe(1);
      expect(await recorded('kysely', failed)).toBe(0);
      expect(await effects('kysely', failed)).toBe(0);
    });

    it('records nothing when the caller’s Kysely Transaction rolls back', async () => {
      const key = freshKey();
      await expect(
        kysely.transaction().execute(async (trx) => {
          await outbox.once(trx, 'kysely', key, (tx) => kyselyEffect(tx, 'kysely', key));
          throw new Error('caller rolls back');
        }),
      ).rejects.toThrow('caller rolls back');
      expect(await recorded('kysely', key)).toBe(0);
      expect(await effects('kysely', key)).toBe(0);
    });
  });

  describe('8 concurrent callers with the same key', () => {
    /**
     * The first caller to record the key holds its transaction open inside fn until the seven others are seen
     * waiting on its key in pg_stat_activity; then it commits and they must all answer { duplicate: true }.
     */
    async function race(callOnce: (key: string, fn: () => Promise<string>) => Promise<OnceResult<string>>) {
      const key = freshKey();
      let runs = 0;
      const fn = async () => {
        runs += 1;
        await waitFor('seven callers wait on the first one’s key', async () => (await lockWaiters()) === 7);
        return 'ran';
      };
      const results = await Promise.all(Array.from({ length: 8 }, () => callOnce(key, fn)));
      expect(runs).toBe(1);
      expect(results.filter((r) => !r.duplicate)).toEqual([{ duplicate: false, result: 'ran' }]);
      expect(results.filter((r) => r.duplicate)).toHaveLength(7);
      expect(await recorded('race', key)).toBe(1);
    }

    it('with a Pool: exactly one runs fn, the others get { duplicate: true }', async () => {
      await race((key, fn) => outbox.once(t.pool, 'race', key, fn));
    });

    it('with PoolClients in their own transactions: exactly one runs fn, no errors or deadlocks', async () => {
      await race(async (key, fn) => {
        const c = await t.pool.connect();
        try {
          await c.query('BEGIN');
          const result = await outbox.once(c, 'race', key, fn);
          await c.query('COMMIT');
          return result;
        } finally {
          await c.query('ROLLBACK').catch(() => undefined);
          c.release();
        }
      });
    });

    it('with a Kysely instance: exactly one runs fn, the others get { duplicate: true }', async () => {
      const racePool = new pg.Pool({ connectionString: t.db.url, max: 8 });
      const raceKysely = new Kysely<Database>({ dialect: new PostgresDialect({ pool: racePool }) });
      try {
        await race((key, fn) => outbox.once(raceKysely, 'race', key, fn));
      } finally {
        await raceKysely.destroy();
      }
    });
  });

  describe('ctx.once in a transactional subscription', () => {
    let consumerOutbox: Outbox;
    const calls = new Map<string, number>();
    const handled = (messageId: string) => calls.get(messageId) ?? 0;
    const awards = (order: number) =>
      count(t.pool, `SELECT count(*) AS n FROM points WHERE order_id = $1`, [order]);
    /** Acks of the message's deliveries to 'points', from the audit view. */
    const deliveryDone = (messageId: string) =>
      count(
        t.pool,
        `SELECT count(*) AS n FROM outbox.message_deliveries
         WHERE subscription = 'points' AND message_id = $1 AND state = 'done'`,
        [messageId],
      );
    let failFirstAttempt = new Set<number>();

    beforeAll(async () => {
      await t.pool.query('CREATE TABLE points (order_id int NOT NULL, message_id bigint NOT NULL)');
      consumerOutbox = t.outbox();
      await consumerOutbox.declareSubscription('points', { topics: ['order.paid', 'order.refunded'] });
      consumerOutbox.subscribe(
        'points',
        {
          topics: ['order.paid', 'order.refunded'],
          mode: 'transactional',
          pollIntervalMs: 50,
          retry: { minDelayMs: 0, maxDelayMs: 0 },
        },
        async (message: OutboxMessage, ctx) => {
          const { orderId } = message.payload as { orderId: number };
          calls.set(message.id, handled(message.id) + 1);
          // order.paid: keyed by order, so two messages for one order award once; order.refunded: the default
          // key, the message id.
          const key = message.topic === 'order.paid' ? `order:${orderId}` : undefined;
          await ctx.once(key, (tx) =>
            tx.query('INSERT INTO points (order_id, message_id) VALUES ($1, $2)', [orderId, message.id]),
          );
          if (failFirstAttempt.has(orderId) && message.attempt === 1)
            throw new Error('fail after the effect');
        },
      );
      await consumerOutbox.start();
    });
    afterAll(async () => {
      await consumerOutbox.stop();
      failFirstAttempt = new Set();
    });

    it('awards once when two messages carry the same key', async () => {
      const [a, b] = await outbox.publishMany(t.pool, [
        { topic: 'order.paid', payload: { orderId: 1 } },
        { topic: 'order.paid', payload: { orderId: 1 } },
      ]);
      const ids = [a?.id ?? '', b?.id ?? ''];
      await waitFor(
        'both messages handled and acked',
        async () =>
          ids.every((id) => handled(id) === 1) &&
          (await deliveryDone(ids[0] ?? '')) === 1 &&
          (await deliveryDone(ids[1] ?? '')) === 1,
      );
      expect(await awards(1)).toBe(1);
      expect(await recorded('points', 'order:1')).toBe(1);
    });

    it('awards once when the same message is delivered a second time (delivery re-inserted by SQL)', async () => {
      const { id } = await outbox.publish(t.pool, 'order.refunded', { orderId: 2 });
      await waitFor('first delivery acked', async () => (await deliveryDone(id)) === 1);
      expect(await awards(2)).toBe(1);
      // An acked delivery leaves the live table; a second live delivery of the message is a redelivery.
      await t.pool.query(
        `INSERT INTO outbox.deliveries (subscription_id, message_id, available_at)
         SELECT id, $1::bigint, now() FROM outbox.subscriptions WHERE name = 'points'`,
        [id],
      );
      await waitFor(
        'second delivery handled and acked',
        async () => handled(id) === 2 && (await deliveryDone(id)) === 2,
      );
      expect(await awards(2)).toBe(1);
      expect(await recorded('points', id)).toBe(1);
    });

    it('rolls back the key with the effect when the handler throws after ctx.once, so the retry awards once', async () => {
      failFirstAttempt.add(3);
      const { id } = await outbox.publish(t.pool, 'order.paid', { orderId: 3 });
      await waitFor(
        'retried delivery acked',
        async () => handled(id) === 2 && (await deliveryDone(id)) === 1,
      );
      expect(await awards(3)).toBe(1);
      expect(await recorded('points', 'order:3')).toBe(1);
      const { rows } = await t.pool.query(
        `SELECT attempt FROM outbox.message_deliveries WHERE subscription = 'points' AND message_id = $1`,
        [id],
      );
      expect(rows).toEqual([{ attempt: 2 }]);
    });
  });

  describe('ctx.once with a key Postgres cannot store', () => {
    let checker: Outbox;
    const outcomes = new Map<string, unknown>();
    const cjk = Array.from({ length: 1024 }, (_, i) =>
      String.fromCodePoint(0x4e00 + ((i * 7919) % 20000)),
    ).join('');
    const keys: Record<string, string> = { nul: 'a\u0000b', huge: cjk };

    beforeAll(async () => {
      checker = t.outbox();
      await checker.declareSubscription('checked', { topics: ['key.check'] });
      checker.subscribe(
        'checked',
        { topics: ['key.check'], mode: 'transactional', pollIntervalMs: 50 },
        async (message: OutboxMessage, ctx) => {
          const { kind } = message.payload as { kind: string };
          try {
            await ctx.once(keys[kind], () => Promise.resolve('ran'));
            outcomes.set(kind, 'ran');
          } catch (error) {
            outcomes.set(kind, error);
          }
        },
      );
      await checker.start();
    });
    afterAll(async () => checker.stop());

    // consumer/transactional-lane.ts context().once(): the key goes to insertProcessedKey unchecked, unlike
    // outbox.once() (create-outbox.ts assertKeyPart). A NUL fails in Postgres with 22021 and a 3,072-byte key
    // with 54000; either aborts the handler's transaction, so a handler that catches the error cannot go on and
    // the ack fails until the lease runs out.
    it.each(['nul', 'huge'])(
      'rejects a %s key with OUTBOX_INVALID_OPTION before SQL, so the handler can catch it and the delivery is acked',
      async (kind) => {
        const { id } = await outbox.publish(t.pool, 'key.check', { kind });
        const outcome = await waitFor(`handler of ${kind} finished`, () => outcomes.get(kind));
        expect(outcome).toBeInstanceOf(OutboxError);
        expect(outcome).toMatchObject({ code: 'OUTBOX_INVALID_OPTION' });
        await waitFor(
          'delivery acked',
          async () =>
            (await count(
              t.pool,
              `SELECT count(*) AS n FROM outbox.message_deliveries
             WHERE subscription = 'checked' AND message_id = $1 AND state = 'done'`,
              [id],
            )) === 1,
        );
      },
    );
  });
});
