import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isOutboxError, type Queryable } from '../../src/index.js';
import { count, doneCount, setupOutboxTest, waitFor, type OutboxTestContext } from './outbox.js';
import { thrown } from './thrown.js';

/**
 * One data-access library as the shared suite drives it. `Db` is what the application holds (a pool-like object),
 * `Tx` the transaction object the library hands a transaction callback.
 */
export interface DataLibrary<Db extends Queryable, Tx extends Queryable> {
  name: string;
  /** Connects to the test database, where the table `orders (id serial, note text)` exists. */
  connect(url: string): Promise<Db>;
  close(db: Db): Promise<void>;
  /** Runs fn in a transaction of the library's own: committed when fn resolves, rolled back when it throws. */
  transaction<T>(db: Db, fn: (tx: Tx) => Promise<T>): Promise<T>;
  /** Inserts a business row through the library's own API (its query builder, ORM or tagged template). */
  insertOrder(db: Db | Tx, note: string): Promise<void>;
}

class Rollback extends Error {}

/** What a promise rejects with; fails the test when it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}

/**
 * What every data library must do with pg-outbox on real Postgres: commit ⇒ delivered once, rollback ⇒ never,
 * dedup and cancel through it, once() in its transactions, and transactional handlers whose ctx.tx is its own.
 */
export function describeDataLibrary<Db extends Queryable, Tx extends Queryable>(
  lib: DataLibrary<Db, Tx>,
): void {
  describe(`pg-outbox through ${lib.name}`, () => {
    let t: OutboxTestContext;
    let db: Db;
    let seq = 0;
    const fresh = (what: string) => `${what}-${++seq}`;
    const orders = (note: string) =>
      count(t.pool, 'SELECT count(*) AS n FROM orders WHERE note = $1', [note]);
    const messages = (topic: string) =>
      count(t.pool, 'SELECT count(*) AS n FROM outbox.messages WHERE topic = $1', [topic]);
    const done = (subscription: string) => doneCount(t.pool, subscription);

    beforeAll(async () => {
      t = await setupOutboxTest();
      await t.pool.query('CREATE TABLE orders (id serial PRIMARY KEY, note text NOT NULL)');
      db = await lib.connect(t.db.url);
    });
    afterAll(async () => {
      await lib.close(db);
      await t.close();
    });

    /** A lease-mode consumer that records the message ids it is handed. */
    async function consumer(topic: string) {
      const outbox = t.outbox();
      const name = fresh('sub');
      const handled: string[] = [];
      outbox.subscribe(name, { topics: [topic] }, (m) => {
        handled.push(m.id);
      });
      await outbox.start();
      return { outbox, name, handled };
    }

    it('commits the messages with the business row in its transaction, and each is delivered once', async () => {
      const topic = fresh('commit');
      const { outbox, name, handled } = await consumer(topic);
      const ids = await lib.transaction(db, async (tx) => {
        await lib.insertOrder(tx, topic);
        const one = await outbox.publish(tx, topic, { n: 1 }, { key: 'order-1', headers: { h: 'v' } });
        expect(await messages(topic)).toBe(0); // not visible before COMMIT
        const many = await outbox.publishMany(tx, [
          { topic, payload: { n: 2 } },
          { topic, payload: { n: 3 }, key: 'order-3' },
        ]);
        return [one, ...many].map((r) => r.id);
      });
      await waitFor('three deliveries done', async () => (await done(name)) === 3);
      expect(handled.sort()).toEqual([...ids].sort());
      expect(await orders(topic)).toBe(1);
      const { rows } = await t.pool.query(
        'SELECT key, payload, headers FROM outbox.messages WHERE id = $1::bigint',
        [ids[0]],
      );
      expect(rows).toEqual([{ key: 'order-1', payload: { n: 1 }, headers: { h: 'v' } }]);
    });

    it('writes nothing when its transaction rolls back: the message is never delivered', async () => {
      const topic = fresh('rollback');
      const { outbox, name, handled } = await consumer(topic);
      const error = await rejection(
        lib.transaction(db, async (tx) => {
          await lib.insertOrder(tx, topic);
          await outbox.publish(tx, topic, { n: 'rolled back' });
          await outbox.publishMany(tx, [{ topic, payload: { n: 'rolled back too' } }]);
          throw new Rollback('business rule failed');
        }),
      );
      expect(error).toBeInstanceOf(Rollback);
      // Published through the pool-like object itself, outside any transaction of the caller's.
      const marker = await outbox.publish(db, topic, { n: 'marker' });
      await waitFor('marker done', async () => (await done(name)) === 1);
      expect(handled).toEqual([marker.id]);
      expect(await messages(topic)).toBe(1);
      expect(await orders(topic)).toBe(0);
    });

    it('returns the first id for a repeated dedupKey, alone and in publishMany', async () => {
      const topic = fresh('dedup');
      const outbox = t.outbox();
      const first = await outbox.publish(db, topic, { v: 1 }, { dedupKey: 'pay-1' });
      const again = await lib.transaction(db, (tx) =>
        outbox.publish(tx, topic, { v: 2 }, { dedupKey: 'pay-1' }),
      );
      expect(again).toEqual({ id: first.id, duplicate: true });
      const batch = await lib.transaction(db, (tx) =>
        outbox.publishMany(tx, [
          { topic, payload: { v: 3 }, dedupKey: 'pay-1' },
          { topic, payload: { v: 4 } },
          { topic, payload: { v: 5 }, dedupKey: 'pay-2' },
        ]),
      );
      expect(batch.map((r) => r.duplicate)).toEqual([true, false, false]);
      expect(batch[0]?.id).toBe(first.id);
      expect(await messages(topic)).toBe(3);
    });

    it('cancels a delayed message in its transaction: no delivery starts', async () => {
      const topic = fresh('cancel');
      const { outbox, name, handled } = await consumer(topic);
      const delayed = await outbox.publish(db, topic, { n: 1 }, { delayMs: 600_000 });
      await waitFor('relayed', async () => {
        const n = await count(
          t.pool,
          'SELECT count(*) AS n FROM outbox.audit_deliveries WHERE subscription = $1 AND message_id = $2::bigint',
          [name, delayed.id],
        );
        return n === 1;
      });
      const result = await lib.transaction(db, (tx) => outbox.cancel(tx, delayed.id));
      expect(result).toEqual({ cancelled: 1 });
      const { rows } = await t.pool.query(
        'SELECT status FROM outbox.audit_deliveries WHERE subscription = $1 AND message_id = $2::bigint',
        [name, delayed.id],
      );
      expect(rows).toEqual([{ status: 'cancelled' }]);
      expect(handled).toEqual([]);
    });

    it('once() runs fn once per key in a transaction of the library, and a throw records nothing', async () => {
      const outbox = t.outbox();
      const note = fresh('once');
      const first = await outbox.once(db, 'billing', note, async (tx) => {
        await lib.insertOrder(tx as Tx, note);
        return 'ran';
      });
      expect(first).toEqual({ duplicate: false, result: 'ran' });
      expect(await outbox.once(db, 'billing', note, () => Promise.resolve('again'))).toEqual({
        duplicate: true,
      });
      expect(await orders(note)).toBe(1);

      const failing = fresh('once-fails');
      const error = await rejection(
        outbox.once(db, 'billing', failing, async (tx) => {
          await lib.insertOrder(tx as Tx, failing);
          throw new Rollback('charge failed');
        }),
      );
      expect(error).toBeInstanceOf(Rollback);
      expect(await orders(failing)).toBe(0);
      expect(await outbox.once(db, 'billing', failing, () => Promise.resolve('retried'))).toEqual({
        duplicate: false,
        result: 'retried',
      });
    });

    it('once() inside its transaction uses a savepoint: the caller’s rollback undoes the key and the row', async () => {
      const outbox = t.outbox();
      const note = fresh('once-inner');
      await rejection(
        lib.transaction(db, async (tx) => {
          const inner = await outbox.once(tx, 'billing', note, async (same) => {
            expect(same).toBe(tx); // a transaction is handed on as it is
            await lib.insertOrder(tx, note);
          });
          expect(inner.duplicate).toBe(false);
          throw new Rollback('outer rollback');
        }),
      );
      expect(await orders(note)).toBe(0);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.processed WHERE key = $1', [note])).toBe(
        0,
      );
    });

    it('hands transactional handlers ctx.tx of the library: writes commit with the ack, a failed attempt’s roll back', async () => {
      const topic = fresh('handler');
      const outbox = t.outbox();
      const name = fresh('tx-sub');
      const attempts = new Map<string, number>();
      outbox.subscribe(
        name,
        { topics: [topic], mode: 'transactional', db, retry: { minDelayMs: 0 } },
        async (m, ctx) => {
          attempts.set(m.id, m.attempt);
          await lib.insertOrder(ctx.tx as Tx, `handled:${topic}`);
          const once = await ctx.once(undefined, (tx) => lib.insertOrder(tx as Tx, `once:${topic}`));
          expect(once.duplicate).toBe(false);
          if ((m.payload as { fail: boolean }).fail && m.attempt === 1)
            throw new Error('first attempt fails');
        },
      );
      await outbox.start();
      const published = await outbox.publishMany(
        db,
        Array.from({ length: 20 }, (_, i) => ({ topic, payload: { i, fail: i % 7 === 3 } })),
      );
      await waitFor('all 20 done', async () => (await done(name)) === 20);
      await outbox.stop();
      // One committed row per message: the rows written by the failing first attempts rolled back with them.
      expect(await orders(`handled:${topic}`)).toBe(20);
      expect(await orders(`once:${topic}`)).toBe(20);
      expect(published.filter((p) => attempts.get(p.id) === 2)).toHaveLength(3);
    });

    it('refuses a transaction as subscribe’s db, and db in lease mode', async () => {
      const outbox = t.outbox();
      await lib.transaction(db, (tx) => {
        const error = thrown(() =>
          outbox.subscribe(fresh('bad'), { topics: ['x'], mode: 'transactional', db: tx }, () => undefined),
        );
        expect(isOutboxError(error, 'OUTBOX_INVALID_EXECUTOR')).toBe(true);
        return Promise.resolve();
      });
      const lease = thrown(() =>
        outbox.subscribe(fresh('bad'), { topics: ['x'], db } as never, () => undefined),
      );
      expect(isOutboxError(lease, 'OUTBOX_INVALID_OPTION')).toBe(true);
    });
  });
}
