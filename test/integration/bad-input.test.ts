import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createOutbox,
  OutboxError,
  type Outbox,
  type OutboxErrorCode,
  type PublishInput,
  type PublishOptions,
  type Queryable,
  type SubscribeOptions,
} from '../../src/index.js';
import { count, setupOutboxTest, testLogger, type OutboxTestContext } from '../helpers/outbox.js';

// Bad input must fail with an OutboxError before anything is written; where the check runs before any SQL, the
// caller's transaction must stay usable.

async function rejectionOf(action: () => unknown): Promise<unknown> {
  try {
    await action();
  } catch (error) {
    return error;
  }
  throw new Error('expected the call to fail');
}

async function expectOutboxError(action: () => unknown, code: OutboxErrorCode): Promise<OutboxError> {
  const error = await rejectionOf(action);
  expect(error).toBeInstanceOf(OutboxError);
  expect(error).toMatchObject({ code });
  return error as OutboxError;
}

/** A real pg.Pool whose connect() and query() fail and record the call: proof that nothing ran SQL. */
function trapPool(): { pool: pg.Pool; used: string[] } {
  const pool = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/never' });
  const used: string[] = [];
  Object.assign(pool, {
    connect: () => {
      used.push('connect');
      return Promise.reject(new Error('the trap pool was used'));
    },
    query: () => {
      used.push('query');
      return Promise.reject(new Error('the trap pool was used'));
    },
  });
  return { pool, used };
}

const nextMacrotask = () => new Promise((resolve) => setImmediate(resolve));

const cyclic: Record<string, unknown> = { id: 1 };
cyclic.self = cyclic;

describe('bad input', () => {
  let t: OutboxTestContext;
  let outbox: Outbox;
  let small: Outbox;
  const messages = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.messages');
  const subscriptions = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.subscriptions');
  const processed = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.processed');

  /**
   * Runs the bad call inside a caller's transaction, then proves the transaction is still usable by publishing a
   * valid message in it and committing: exactly that one message is written.
   */
  async function expectRejectedInTransaction(
    action: (db: pg.PoolClient) => unknown,
    code: OutboxErrorCode,
  ): Promise<void> {
    const before = await messages();
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await expectOutboxError(() => action(client), code);
      const ok = await outbox.publish(client, 'bad-input.after', { ok: true });
      await client.query('COMMIT');
      expect(await messages()).toBe(before + 1);
      const { rows } = await t.pool.query<{ id: string }>(
        `SELECT id FROM outbox.messages WHERE topic = 'bad-input.after' ORDER BY id DESC LIMIT 1`,
      );
      expect(rows).toEqual([{ id: ok.id }]);
    } finally {
      await client.query('ROLLBACK').catch(() => undefined);
      client.release();
    }
  }

  beforeAll(async () => {
    t = await setupOutboxTest();
    outbox = t.outbox();
    small = t.outbox({ maxPayloadBytes: 64 });
  });
  afterAll(async () => t.close());

  describe('createOutbox', () => {
    it.each([
      'Outbox',
      'out"box',
      'out%box',
      'out$box',
      'billing.outbox',
      'ausgänge',
      'pg_outbox',
      'x'.repeat(51),
    ])('rejects the schema name %j with OUTBOX_INVALID_SCHEMA before using the pool', async (schema) => {
      const { pool, used } = trapPool();
      await expectOutboxError(
        () => createOutbox({ pool, schema, logger: testLogger }),
        'OUTBOX_INVALID_SCHEMA',
      );
      await nextMacrotask();
      expect(used).toEqual([]);
      await pool.end();
    });

    it('rejects an unknown option with OUTBOX_UNKNOWN_OPTION before using the pool', async () => {
      const { pool, used } = trapPool();
      const error = await expectOutboxError(
        () => createOutbox({ pool, logger: testLogger, relayEnabled: false } as never),
        'OUTBOX_UNKNOWN_OPTION',
      );
      expect(error.value).toBe('relayEnabled');
      await nextMacrotask();
      expect(used).toEqual([]);
      await pool.end();
    });
  });

  describe('publish', () => {
    const cases: { title: string; code: OutboxErrorCode; call: (db: Queryable) => Promise<unknown> }[] = [
      {
        title: 'rejects an invalid topic (a space) with OUTBOX_INVALID_TOPIC',
        code: 'OUTBOX_INVALID_TOPIC',
        call: (db) => outbox.publish(db, 'order paid', {}),
      },
      {
        title: 'rejects a wildcard topic with OUTBOX_INVALID_TOPIC',
        code: 'OUTBOX_INVALID_TOPIC',
        call: (db) => outbox.publish(db, 'order.*', {}),
      },
      {
        title: 'rejects an empty topic with OUTBOX_INVALID_TOPIC',
        code: 'OUTBOX_INVALID_TOPIC',
        call: (db) => outbox.publish(db, '', {}),
      },
      {
        title: 'rejects an unknown publish option with OUTBOX_UNKNOWN_OPTION',
        code: 'OUTBOX_UNKNOWN_OPTION',
        call: (db) => outbox.publish(db, 'order.paid', {}, { partitionKey: 'x' } as PublishOptions),
      },
      {
        title: 'rejects a BigInt payload with OUTBOX_INVALID_PAYLOAD',
        code: 'OUTBOX_INVALID_PAYLOAD',
        call: (db) => outbox.publish(db, 'order.paid', { amount: 10n }),
      },
      {
        title: 'rejects a cyclic payload with OUTBOX_INVALID_PAYLOAD',
        code: 'OUTBOX_INVALID_PAYLOAD',
        call: (db) => outbox.publish(db, 'order.paid', cyclic),
      },
      {
        title: 'rejects an undefined payload with OUTBOX_INVALID_PAYLOAD',
        code: 'OUTBOX_INVALID_PAYLOAD',
        call: (db) => outbox.publish(db, 'order.paid', undefined),
      },
      {
        title: 'rejects a function payload with OUTBOX_INVALID_PAYLOAD',
        code: 'OUTBOX_INVALID_PAYLOAD',
        call: (db) => outbox.publish(db, 'order.paid', () => 'x'),
      },
      {
        title: 'rejects a payload string with \\u0000 with OUTBOX_INVALID_PAYLOAD',
        code: 'OUTBOX_INVALID_PAYLOAD',
        call: (db) => outbox.publish(db, 'order.paid', { note: 'a\u0000b' }),
      },
      {
        title: 'rejects a payload over maxPayloadBytes with OUTBOX_PAYLOAD_TOO_LARGE',
        code: 'OUTBOX_PAYLOAD_TOO_LARGE',
        call: (db) => small.publish(db, 'order.paid', { text: 'x'.repeat(60) }),
      },
      {
        title: 'rejects an empty key with OUTBOX_INVALID_KEY',
        code: 'OUTBOX_INVALID_KEY',
        call: (db) => outbox.publish(db, 'order.paid', {}, { key: '' }),
      },
      {
        title: 'rejects a numeric key with OUTBOX_INVALID_KEY',
        code: 'OUTBOX_INVALID_KEY',
        call: (db) => outbox.publish(db, 'order.paid', {}, { key: 42 as unknown as string }),
      },
      {
        title: 'rejects a key of 513 characters with OUTBOX_INVALID_KEY',
        code: 'OUTBOX_INVALID_KEY',
        call: (db) => outbox.publish(db, 'order.paid', {}, { key: 'k'.repeat(513) }),
      },
      {
        title: 'rejects a key with \\u0000 with OUTBOX_INVALID_KEY',
        code: 'OUTBOX_INVALID_KEY',
        call: (db) => outbox.publish(db, 'order.paid', {}, { key: 'a\u0000b' }),
      },
      {
        title: 'rejects headers with a number value with OUTBOX_INVALID_HEADERS',
        code: 'OUTBOX_INVALID_HEADERS',
        call: (db) =>
          outbox.publish(
            db,
            'order.paid',
            {},
            { headers: { retries: 3 } as unknown as Record<string, string> },
          ),
      },
      {
        title: 'rejects headers given as an array with OUTBOX_INVALID_HEADERS',
        code: 'OUTBOX_INVALID_HEADERS',
        call: (db) =>
          outbox.publish(db, 'order.paid', {}, { headers: ['a'] as unknown as Record<string, string> }),
      },
      {
        title: 'rejects both deliverAt and delayMs with OUTBOX_INVALID_OPTION',
        code: 'OUTBOX_INVALID_OPTION',
        call: (db) => outbox.publish(db, 'order.paid', {}, { deliverAt: new Date(), delayMs: 1000 }),
      },
      {
        title: 'rejects an invalid deliverAt Date with OUTBOX_INVALID_OPTION',
        code: 'OUTBOX_INVALID_OPTION',
        call: (db) => outbox.publish(db, 'order.paid', {}, { deliverAt: new Date('soon') }),
      },
      {
        title: 'rejects a negative delayMs with OUTBOX_INVALID_OPTION',
        code: 'OUTBOX_INVALID_OPTION',
        call: (db) => outbox.publish(db, 'order.paid', {}, { delayMs: -1 }),
      },
      {
        title: 'rejects an empty dedupKey with OUTBOX_INVALID_OPTION',
        code: 'OUTBOX_INVALID_OPTION',
        call: (db) => outbox.publish(db, 'order.paid', {}, { dedupKey: '' }),
      },
      // The driver would store a lone surrogate as U+FFFD: two different keys would become one.
      {
        title: 'rejects a dedupKey with a lone surrogate with OUTBOX_INVALID_OPTION',
        code: 'OUTBOX_INVALID_OPTION',
        call: (db) => outbox.publish(db, 'order.paid', {}, { dedupKey: 'req-\ud83d' }),
      },
      {
        title: 'rejects a key with a lone surrogate with OUTBOX_INVALID_KEY',
        code: 'OUTBOX_INVALID_KEY',
        call: (db) => outbox.publish(db, 'order.paid', {}, { key: 'k-\udc00x' }),
      },
    ];

    it.each(cases)('$title and writes nothing (Pool)', async ({ call, code }) => {
      const before = await messages();
      await expectOutboxError(() => call(t.pool), code);
      expect(await messages()).toBe(before);
    });

    it.each(cases)('$title and leaves the caller’s transaction usable', async ({ call, code }) => {
      await expectRejectedInTransaction(call, code);
    });

    it('rejects headers with \\u0000 in a value with an OutboxError and writes nothing', async () => {
      const before = await messages();
      const error = await rejectionOf(() =>
        outbox.publish(t.pool, 'order.paid', {}, { headers: { note: 'a\u0000b' } }),
      );
      expect(error).toBeInstanceOf(OutboxError);
      expect((error as OutboxError).code).toMatch(/^OUTBOX_INVALID_(HEADERS|PAYLOAD)$/);
      expect(await messages()).toBe(before);
    });

    // message-input.ts toJson(): JSON.stringify turns a lone surrogate into the escape \ud800, which passes the
    // checks; Postgres's jsonb input then fails with 22P02 ("Unicode low surrogate must follow a high
    // surrogate") and the caller's transaction is aborted.
    it('rejects a payload with a lone UTF-16 surrogate with OUTBOX_INVALID_PAYLOAD and leaves the caller’s transaction usable', async () => {
      await expectRejectedInTransaction(
        (db) => outbox.publish(db, 'order.paid', { name: 'broken \ud800 pair' }),
        'OUTBOX_INVALID_PAYLOAD',
      );
    });

    // message-input.ts due(): any finite Date passes, but JavaScript Dates reach back to year -271821 and
    // timestamptz only to 4713 BC, so Postgres fails with 22008 "timestamp out of range" mid-transaction.
    it('rejects a deliverAt before 4713 BC with OUTBOX_INVALID_OPTION and leaves the caller’s transaction usable', async () => {
      await expectRejectedInTransaction(
        (db) => outbox.publish(db, 'order.paid', {}, { deliverAt: new Date(-8.64e15) }),
        'OUTBOX_INVALID_OPTION',
      );
    });

    // message-input.ts toJson(): `json.includes('\\u0000')` also matches the escaped backslash of the text
    // backslash-u-0-0-0-0 (JSON "\\u0000"), which is not a NUL and which jsonb stores fine.
    it('accepts and stores a payload holding a backslash followed by u0000 (not a NUL)', async () => {
      const { id } = await outbox.publish(t.pool, 'order.paid', { path: 'C:\\u0000' });
      const { rows } = await t.pool.query<{ path: string }>(
        `SELECT payload->>'path' AS path FROM outbox.messages WHERE id = $1`,
        [id],
      );
      expect(rows).toEqual([{ path: 'C:\\u0000' }]);
    });
  });

  describe('publishMany', () => {
    const good = (n: number): PublishInput => ({ topic: 'batch.item', payload: { n }, key: `k${n}` });
    it.each([
      {
        title: 'a BigInt payload',
        code: 'OUTBOX_INVALID_PAYLOAD' as const,
        third: { topic: 'batch.item', payload: { n: 3n } },
      },
      {
        title: 'an invalid topic',
        code: 'OUTBOX_INVALID_TOPIC' as const,
        third: { topic: 'batch item', payload: 3 },
      },
      {
        title: 'an unknown option',
        code: 'OUTBOX_UNKNOWN_OPTION' as const,
        third: { topic: 'batch.item', payload: 3, delay: 5 } as PublishInput,
      },
      {
        title: 'an invalid key',
        code: 'OUTBOX_INVALID_KEY' as const,
        third: { topic: 'batch.item', payload: 3, key: '' },
      },
    ])(
      'rejects a batch whose 3rd of 3 messages has $title with $code and writes none of the batch',
      async ({ third, code }) => {
        const before = await messages();
        await expectOutboxError(() => outbox.publishMany(t.pool, [good(1), good(2), third]), code);
        expect(await messages()).toBe(before);
        await expectRejectedInTransaction((db) => outbox.publishMany(db, [good(1), good(2), third]), code);
      },
    );

    it('rejects a batch that is not an array, or holds a non-object, with OUTBOX_INVALID_OPTION', async () => {
      const before = await messages();
      await expectOutboxError(
        () => outbox.publishMany(t.pool, good(1) as unknown as PublishInput[]),
        'OUTBOX_INVALID_OPTION',
      );
      await expectOutboxError(
        () => outbox.publishMany(t.pool, [good(1), null as unknown as PublishInput]),
        'OUTBOX_INVALID_OPTION',
      );
      expect(await messages()).toBe(before);
    });
  });

  describe('executors', () => {
    it.each([
      ['null', null],
      ['undefined', undefined],
      ['a connection string', 'postgres://postgres@127.0.0.1/test'],
      ['a number', 42],
      ['an empty object', {}],
      ['an object with a non-function query', { query: 'SELECT 1' }],
      ['a function of no known library', () => 1],
    ])('rejects %s as db with OUTBOX_INVALID_EXECUTOR and writes nothing', async (_, db) => {
      const before = await messages();
      const bad = db as unknown as Queryable;
      await expectOutboxError(() => outbox.publish(bad, 'order.paid', {}), 'OUTBOX_INVALID_EXECUTOR');
      await expectOutboxError(
        () => outbox.publishMany(bad, [{ topic: 'order.paid', payload: {} }]),
        'OUTBOX_INVALID_EXECUTOR',
      );
      await expectOutboxError(() => outbox.cancel(bad, 1), 'OUTBOX_INVALID_EXECUTOR');
      let ran = false;
      await expectOutboxError(
        () =>
          outbox.once(bad, 'bad-input', 'executor', () => {
            ran = true;
            return Promise.resolve();
          }),
        'OUTBOX_INVALID_EXECUTOR',
      );
      expect(ran).toBe(false);
      expect(await messages()).toBe(before);
    });
  });

  describe('subscriptions', () => {
    const handler = () => undefined;
    it.each([
      {
        title: 'an invalid subscription name',
        code: 'OUTBOX_INVALID_SUBSCRIPTION' as const,
        name: 'my points',
        options: { topics: ['order.paid'] },
      },
      {
        title: 'an unknown option',
        code: 'OUTBOX_UNKNOWN_OPTION' as const,
        name: 'bad-unknown',
        options: { topics: ['order.paid'], group: 'x' } as SubscribeOptions,
      },
      {
        title: 'blockKeyOnDead with ordered: false',
        code: 'OUTBOX_INVALID_OPTION' as const,
        name: 'bad-ordered',
        options: { topics: ['order.paid'], ordered: false, blockKeyOnDead: true },
      },
      {
        title: 'an invalid topic filter',
        code: 'OUTBOX_INVALID_TOPIC' as const,
        name: 'bad-topic',
        options: { topics: ['order.#.paid'] },
      },
      {
        title: 'no topics',
        code: 'OUTBOX_INVALID_OPTION' as const,
        name: 'bad-no-topics',
        options: { topics: [] },
      },
      {
        title: 'maxAttempts 0',
        code: 'OUTBOX_INVALID_OPTION' as const,
        name: 'bad-attempts',
        options: { topics: ['order.paid'], maxAttempts: 0 },
      },
    ])('subscribe rejects $title with $code and declares nothing', async ({ name, options, code }) => {
      const before = await subscriptions();
      const o = t.outbox();
      await expectOutboxError(() => o.subscribe(name, options, handler), code);
      await o.start();
      await o.stop();
      expect(await subscriptions()).toBe(before);
    });

    it('does not register a subscribe call that was rejected, so a corrected one succeeds', async () => {
      const o = t.outbox({ relay: { enabled: false } });
      await expectOutboxError(
        () =>
          o.subscribe('bad-retry', { topics: ['order.paid'], ordered: false, blockKeyOnDead: true }, handler),
        'OUTBOX_INVALID_OPTION',
      );
      expect(() => o.subscribe('bad-retry', { topics: ['order.paid'] }, handler)).not.toThrow();
      await expectOutboxError(
        () => o.subscribe('bad-retry', { topics: ['order.paid'] }, handler),
        'OUTBOX_DUPLICATE_SUBSCRIBER',
      );
    });

    it('subscribe rejects a handler that is not a function with OUTBOX_INVALID_OPTION', async () => {
      await expectOutboxError(
        () => outbox.subscribe('bad-handler', { topics: ['a'] }, 'handler' as never),
        'OUTBOX_INVALID_OPTION',
      );
    });

    it('declareSubscription rejects an invalid name or topic filter and writes nothing', async () => {
      const before = await subscriptions();
      await expectOutboxError(
        () => outbox.declareSubscription('-points', { topics: ['order.paid'] }),
        'OUTBOX_INVALID_SUBSCRIPTION',
      );
      await expectOutboxError(
        () => outbox.declareSubscription('points', { topics: ['order.pa*'] }),
        'OUTBOX_INVALID_TOPIC',
      );
      await expectOutboxError(
        () => outbox.declareSubscription('points', { topics: [] }),
        'OUTBOX_INVALID_OPTION',
      );
      expect(await subscriptions()).toBe(before);
    });

    // create-outbox.ts declareSubscription(): only opts.topics is read; other keys are never checked, so a typo
    // such as `topic` (or an option meant for subscribe) is silently ignored instead of failing like subscribe.
    it('declareSubscription rejects an unknown option with OUTBOX_UNKNOWN_OPTION and writes nothing', async () => {
      const before = await subscriptions();
      const outcome = await rejectionOf(() =>
        outbox.declareSubscription('bad-declare', {
          topics: ['order.paid'],
          topic: 'order.refunded',
        } as unknown as { topics: string[] }),
      ).catch((error: unknown) => error);
      expect(await subscriptions()).toBe(before);
      expect(outcome).toBeInstanceOf(OutboxError);
      expect(outcome).toMatchObject({ code: 'OUTBOX_UNKNOWN_OPTION' });
    });
  });

  describe('operations', () => {
    it('start() on an unmigrated schema fails with OUTBOX_NOT_MIGRATED and creates nothing', async () => {
      const o = t.outbox({ schema: 'never_migrated' });
      o.subscribe('points', { topics: ['order.paid'] }, () => undefined);
      await expectOutboxError(() => o.start(), 'OUTBOX_NOT_MIGRATED');
      expect(
        await count(t.pool, `SELECT count(*) AS n FROM pg_namespace WHERE nspname = 'never_migrated'`),
      ).toBe(0);
      await o.stop();
    });

    it('deadLetters and replay of an unknown subscription fail with OUTBOX_UNKNOWN_SUBSCRIPTION', async () => {
      await expectOutboxError(
        () => outbox.deadLetters('no-such-subscription'),
        'OUTBOX_UNKNOWN_SUBSCRIPTION',
      );
      await expectOutboxError(() => outbox.replay('no-such-subscription'), 'OUTBOX_UNKNOWN_SUBSCRIPTION');
      await expectOutboxError(() => outbox.deadLetters('no such'), 'OUTBOX_INVALID_SUBSCRIPTION');
    });

    it('cancel rejects an id that is not a positive integer with OUTBOX_INVALID_OPTION', async () => {
      await expectOutboxError(() => outbox.cancel(t.pool, 'abc'), 'OUTBOX_INVALID_OPTION');
      await expectOutboxError(() => outbox.cancel(t.pool, -1), 'OUTBOX_INVALID_OPTION');
      expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.cancellations')).toBe(0);
    });

    describe('with two dead letters', () => {
      let deliveryIds: string[];
      const dead = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.dead_deliveries');

      beforeAll(async () => {
        await outbox.declareSubscription('dead-end', { topics: ['dead.end'] });
        const published = await outbox.publishMany(t.pool, [
          { topic: 'dead.end', payload: 1 },
          { topic: 'dead.end', payload: 2 },
        ]);
        // Dead letters set up directly, as a consumer that gave up would leave them.
        const { rows } = await t.pool.query<{ id: string }>(
          `INSERT INTO outbox.dead_deliveries (id, subscription_id, message_id, attempt, last_error, created_at)
           SELECT nextval(pg_get_serial_sequence('outbox.deliveries', 'id')), s.id, m.id::bigint, 10, 'gave up',
                  now()
           FROM outbox.subscriptions s, unnest($1::text[]) AS m(id)
           WHERE s.name = 'dead-end'
           RETURNING id`,
          [published.map((p) => p.id)],
        );
        deliveryIds = rows.map((r) => r.id);
      });

      it('deadLetters rejects a limit out of range with OUTBOX_INVALID_OPTION', async () => {
        await expectOutboxError(() => outbox.deadLetters('dead-end', { limit: 0 }), 'OUTBOX_INVALID_OPTION');
        expect(await outbox.deadLetters('dead-end')).toHaveLength(2);
      });

      it('replay rejects ids that are not delivery ids with OUTBOX_INVALID_OPTION and re-queues nothing', async () => {
        await expectOutboxError(() => outbox.replay('dead-end', { ids: ['abc'] }), 'OUTBOX_INVALID_OPTION');
        expect(await dead()).toBe(2);
      });

      // admin.ts listDeadLetters(): `after` goes to `$3::bigint` unchecked, so 'abc' fails in Postgres with 22P02
      // instead of an OutboxError.
      it('deadLetters rejects an `after` that is not a delivery id with OUTBOX_INVALID_OPTION', async () => {
        await expectOutboxError(
          () => outbox.deadLetters('dead-end', { after: 'abc' }),
          'OUTBOX_INVALID_OPTION',
        );
      });

      // admin.ts replayDeadLetters(): option keys are not checked, so the typo { id: [...] } reads as "no ids"
      // and re-queues EVERY dead letter of the subscription.
      it('replay rejects the unknown option `id` with OUTBOX_UNKNOWN_OPTION and re-queues nothing', async () => {
        const outcome = await rejectionOf(() =>
          outbox.replay('dead-end', { id: [deliveryIds[0]] } as never),
        ).catch((error: unknown) => error);
        expect(await dead()).toBe(2);
        expect(outcome).toBeInstanceOf(OutboxError);
        expect(outcome).toMatchObject({ code: 'OUTBOX_UNKNOWN_OPTION' });
      });
    });
  });

  describe('once', () => {
    const fn = () => Promise.resolve('ran');

    it('rejects an empty scope, an empty key or a key over 1024 characters with OUTBOX_INVALID_OPTION', async () => {
      const before = await processed();
      await expectOutboxError(() => outbox.once(t.pool, '', 'k', fn), 'OUTBOX_INVALID_OPTION');
      await expectOutboxError(() => outbox.once(t.pool, 'bad-input', '', fn), 'OUTBOX_INVALID_OPTION');
      await expectOutboxError(
        () => outbox.once(t.pool, 'bad-input', 'k'.repeat(1025), fn),
        'OUTBOX_INVALID_OPTION',
      );
      await expectOutboxError(
        () => outbox.once(t.pool, 'bad-input', 42 as unknown as string, fn),
        'OUTBOX_INVALID_OPTION',
      );
      expect(await processed()).toBe(before);
    });

    // idempotency-key.ts assertKeyPart(): the driver would store a lone surrogate as U+FFFD, so two different keys
    // would become one.
    it('rejects a key holding a lone surrogate (a string cut inside an emoji), and accepts the whole emoji', async () => {
      const before = await processed();
      await expectOutboxError(
        () => outbox.once(t.pool, 'bad-input', 'order-\ud83d', fn),
        'OUTBOX_INVALID_OPTION',
      );
      await expectOutboxError(() => outbox.once(t.pool, 'bad-\ude00', 'k', fn), 'OUTBOX_INVALID_OPTION');
      expect(await processed()).toBe(before);
      expect(await outbox.once(t.pool, 'bad-input', 'order-\ud83d\ude00', fn)).toMatchObject({
        duplicate: false,
      });
    });

    // idempotency-key.ts assertKeyPart(): a NUL passes the length check, and Postgres's text input then fails with
    // 22021 ("invalid byte sequence for encoding UTF8: 0x00") instead of an OutboxError.
    it('rejects a key with \\u0000 with OUTBOX_INVALID_OPTION and writes nothing', async () => {
      const before = await processed();
      await expectOutboxError(
        () => outbox.once(t.pool, 'bad-input', 'a\u0000b', fn),
        'OUTBOX_INVALID_OPTION',
      );
      expect(await processed()).toBe(before);
    });

    // idempotency-key.ts assertKeyPart(): the limit is 1024 UTF-16 units per part, but the processed primary key
    // is a btree whose rows may be at most 2704 bytes; 1024 CJK characters are 3072 bytes of UTF-8, so the
    // INSERT fails with 54000 ("index row size ... exceeds btree version 4 maximum 2704").
    it('rejects a scope and key that pass the length check but exceed the index row limit with an OutboxError', async () => {
      const cjk = (offset: number) =>
        Array.from({ length: 1024 }, (_, i) =>
          String.fromCodePoint(0x4e00 + ((i * 7919 + offset) % 20000)),
        ).join('');
      const before = await processed();
      const error = await rejectionOf(() => outbox.once(t.pool, cjk(1), cjk(2), fn));
      expect(error).toBeInstanceOf(OutboxError);
      expect(await processed()).toBe(before);
    });
  });
});
