import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createOutbox,
  OutboxError,
  type Outbox,
  type OnceResult,
  type OutboxErrorCode,
  type OutboxMessage,
} from '../../src/index.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// Hostile names for everything that reaches SQL from the API (schema, topics, topic filters, subscription
// names, idempotency scopes and keys). Each input is either rejected with an OutboxError before any statement
// reaches Postgres, or accepted and then works end to end, under exactly the name given.

const SQL_INJECTION = 'x"; DROP TABLE outbox.messages; --';

const PIECES = [
  '"',
  "'",
  '`',
  '%',
  '%I',
  '%s',
  '$',
  '$$',
  '$1',
  '.',
  ';',
  '--',
  '/*',
  '*/',
  ' ',
  '\t',
  '\n',
  '\\',
  '\u0000',
  '\u200b',
  'é',
  'ß',
  '東',
  '🚀',
  // Letters whose case mapping leaves ASCII or changes length: Kelvin sign, dotted capital I, ligatures.
  '\u212a',
  '\u0130',
  'ǅ',
  'ﬀ',
  'Outbox',
  'outbox',
  'OUTBOX',
  'pg_',
  'select',
  '_',
  '-',
  ':',
  '*',
  '#',
  '0',
  '9',
  'a',
  'z',
  'A',
  'Z',
  SQL_INJECTION,
  "'; DELETE FROM outbox.subscriptions; --",
];

const hostile = fc.array(fc.constantFrom(...PIECES), { maxLength: 10 }).map((p) => p.join(''));
/** Long names in single- and multi-byte characters: Postgres's 63-byte limit counts bytes. */
const long = fc
  .tuple(fc.constantFrom('a', '_', 'A', 'é', '€', '🚀'), fc.integer({ min: 20, max: 130 }))
  .map(([unit, n]) => unit.repeat(n));
/** Not a string; null only where it is not documented as "use the default" (createOutbox's schema). */
const nonString = (withNull = true) =>
  fc.oneof(
    fc.integer(),
    fc.boolean(),
    ...(withNull ? [fc.constant(null)] : []),
    fc.array(fc.string({ maxLength: 3 }), { maxLength: 2 }),
    fc.dictionary(fc.string({ maxLength: 3 }), fc.string({ maxLength: 3 }), { maxKeys: 2 }),
  );
/** Any input: hostile, arbitrary Unicode, long, plausible (`valid`) or not a string at all. */
const inputs = (valid: fc.Arbitrary<string>, withNull = true): fc.Arbitrary<unknown> =>
  fc.oneof(hostile, fc.string({ unit: 'binary', maxLength: 70 }), long, valid, valid, nonString(withNull));

const schemaLike = fc.stringMatching(/^[a-z_][a-z0-9_]{0,60}$/);
const topicLike = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9_-]{1,12}(\.[A-Za-z0-9_-]{1,12}){0,4}$/),
  fc.constantFrom('a'.repeat(200), 'a'.repeat(201), `${'a'.repeat(99)}.${'b'.repeat(100)}`),
);
const filterLike = fc
  .array(fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{1,8}$/), fc.constantFrom('*', '#', '')), {
    minLength: 1,
    maxLength: 4,
  })
  .map((segments) => segments.join('.'));
const subscriptionLike = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,105}$/),
  fc.constantFrom('x'.repeat(100), 'x'.repeat(101), '0', 'a:b.c-d_e'),
);

/** A real pool on the test database that counts every use: pool.query, pool.connect and client checkouts. */
function countingPool(url: string): { pool: pg.Pool; uses: () => number } {
  const pool = new pg.Pool({ connectionString: url, max: 5 });
  let uses = 0;
  const query = pool.query.bind(pool) as (...args: unknown[]) => unknown;
  const connect = pool.connect.bind(pool) as (...args: unknown[]) => unknown;
  Object.assign(pool, {
    query: (...args: unknown[]) => {
      uses += 1;
      return query(...args);
    },
    connect: (...args: unknown[]) => {
      uses += 1;
      return connect(...args);
    },
  });
  pool.on('acquire', () => (uses += 1));
  return { pool, uses: () => uses };
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** Runs an API call that may throw synchronously or reject. */
async function outcomeOf(action: () => unknown): Promise<Outcome> {
  try {
    return { ok: true, value: await action() };
  } catch (error) {
    return { ok: false, error };
  }
}

const nextMacrotask = () => new Promise((resolve) => setImmediate(resolve));

describe('identifiers, property-based', () => {
  let t: OutboxTestContext;
  let counted: { pool: pg.Pool; uses: () => number };
  let outbox: Outbox;
  /** Message id -> topic the every-topic subscription received. */
  const receivedTopics = new Map<string, string>();

  /**
   * Runs the call; when it is rejected, it must be an OutboxError with `code` and the offending value, and
   * the counting pool must not have been touched. Returns whether it was accepted.
   */
  async function acceptedOrRejectedBeforeSql(
    action: () => unknown,
    code: OutboxErrorCode,
    input: unknown,
  ): Promise<boolean> {
    const usesBefore = counted.uses();
    const outcome = await outcomeOf(action);
    if (outcome.ok) return true;
    expect(outcome.error).toBeInstanceOf(OutboxError);
    expect(outcome.error).toMatchObject({ code, value: input });
    await nextMacrotask();
    expect(counted.uses(), 'statements sent for a rejected input').toBe(usesBefore);
    return false;
  }

  /** Schemas of the test database (without temp schemas) and their tables, views and sequences. */
  async function catalog(): Promise<Map<string, string[]>> {
    const { rows } = await t.pool.query<{ schema: string; relations: string[] }>(
      `SELECT n.nspname AS schema,
              coalesce(array_agg(c.relname::text ORDER BY c.relname) FILTER (WHERE c.oid IS NOT NULL), '{}') AS relations
       FROM pg_namespace n
       LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'v', 'p', 'S')
       WHERE n.nspname !~ '^pg_(temp|toast_temp)_'
       GROUP BY n.nspname`,
    );
    return new Map(rows.map((r) => [r.schema, r.relations]));
  }

  beforeAll(async () => {
    t = await setupOutboxTest();
    counted = countingPool(t.db.url);
    outbox = createOutbox({ pool: counted.pool, logger: testLogger });
    const consumer = t.outbox();
    await consumer.declareSubscription('every-topic', { topics: ['#'] });
    consumer.subscribe('every-topic', { topics: ['#'] }, (m) => {
      receivedTopics.set(m.id, m.topic);
    });
    await consumer.start();
  });
  afterAll(async () => {
    await counted.pool.end();
    await t.close();
  });

  describe('schema names', () => {
    it('rejects a schema name before using the pool, or accepts one Postgres keeps unchanged and cannot confuse with a case variant', async () => {
      // undefined and null select the default schema, so they are not generated here.
      await fc.assert(
        fc.asyncProperty(inputs(schemaLike, false), async (schema) => {
          const accepted = await acceptedOrRejectedBeforeSql(
            () => createOutbox({ pool: counted.pool, schema: schema as string, logger: testLogger }),
            'OUTBOX_INVALID_SCHEMA',
            schema,
          );
          if (!accepted) return;
          expect(typeof schema).toBe('string');
          // Accepted names survive Postgres's identifier handling: no truncation of the name or of the NOTIFY
          // channel derived from it (63 bytes), no case folding that could alias another schema.
          const { rows } = await t.pool.query<{ name: string; channel: string; lower: string }>(
            `SELECT $1::name::text AS name, ('pg_outbox.' || $1)::name::text AS channel, lower($1) AS lower`,
            [schema],
          );
          expect(rows[0]).toEqual({ name: schema, channel: `pg_outbox.${String(schema)}`, lower: schema });
        }),
        { numRuns: 300 },
      );
    });

    it('migrates, relays and consumes in accepted schema names, which Postgres then holds under exactly that name and nothing else appears', async () => {
      const before = await catalog();
      const reference = before.get('outbox');
      expect(reference).toContain('messages');
      const migrated = new Set<string>();
      const acceptedName = fc
        .oneof(
          fc.stringMatching(/^[a-z_][a-z0-9_]{0,49}$/),
          fc.constantFrom('select', 'user', 'order', 'table', '_', '__', 'a'.repeat(50), 'z9_'),
        )
        .filter((name) => !name.startsWith('pg_') && !before.has(name));

      await fc.assert(
        fc.asyncProperty(acceptedName, async (schema) => {
          fc.pre(!migrated.has(schema));
          migrated.add(schema);
          const o = t.outbox({ schema });
          const errors: unknown[] = [];
          o.on('error', (error) => errors.push(error));
          await o.migrate();
          await o.declareSubscription('e2e', { topics: ['schema.e2e'] });
          let got: OutboxMessage | undefined;
          o.subscribe('e2e', { topics: ['schema.e2e'], mode: 'transactional' }, (m) => {
            got = m;
          });
          await o.start();
          try {
            const { id } = await o.publish(t.pool, 'schema.e2e', { schema });
            await waitFor(`the message in schema ${schema} was handled`, () => got?.id === id);
            expect(got?.payload).toEqual({ schema });
          } finally {
            await o.stop();
          }
          expect(errors).toEqual([]);
          const quoted = pg.escapeIdentifier(schema);
          expect(await count(t.pool, `SELECT count(*) AS n FROM ${quoted}.completed_deliveries`)).toBe(1);
          expect(
            await count(t.pool, 'SELECT count(*) AS n FROM pg_namespace WHERE nspname = $1', [schema]),
          ).toBe(1);
        }),
        { numRuns: 12 },
      );

      const after = await catalog();
      expect([...after.keys()].sort()).toEqual([...before.keys(), ...migrated].sort());
      for (const [schema, relations] of before) expect(after.get(schema), schema).toEqual(relations);
      for (const schema of migrated) expect(after.get(schema), schema).toEqual(reference);
    });

    it.each([
      ['the SQL injection', SQL_INJECTION],
      ['64 ASCII bytes', 'a'.repeat(64)],
      ['51 ASCII bytes (the NOTIFY channel would not fit)', 'a'.repeat(51)],
      ['63 bytes in 21 three-byte characters', '€'.repeat(21)],
      ['32 two-byte characters (64 bytes)', 'é'.repeat(32)],
      ['upper case', 'Outbox'],
      ['all upper case', 'OUTBOX'],
      ['the Kelvin sign, which lower-cases to k', 'outbo\u212a'],
      ['the pg_ prefix', 'pg_outbox'],
      ['empty', ''],
    ])('rejects the schema name with %s before any SQL, and the outbox tables survive', async (_, schema) => {
      const before = await catalog();
      const accepted = await acceptedOrRejectedBeforeSql(
        () => createOutbox({ pool: counted.pool, schema, logger: testLogger }),
        'OUTBOX_INVALID_SCHEMA',
        schema,
      );
      expect(accepted).toBe(false);
      expect(await catalog()).toEqual(before);
    });
  });

  describe('topics', () => {
    it('rejects a topic in publish and publishMany before any SQL, or stores it unchanged and delivers it under the same name', async () => {
      const published = new Map<string, string>();
      await fc.assert(
        fc.asyncProperty(inputs(topicLike), async (topic) => {
          const messagesBefore = await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages');
          const many = await acceptedOrRejectedBeforeSql(
            () =>
              outbox.publishMany(counted.pool, [
                { topic: 'ident.valid', payload: 1 },
                { topic: topic as string, payload: 2 },
              ]),
            'OUTBOX_INVALID_TOPIC',
            topic,
          );
          if (!many) {
            expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages')).toBe(messagesBefore);
          }
          const accepted = await acceptedOrRejectedBeforeSql(
            async () => {
              const { id } = await outbox.publish(counted.pool, topic as string, { topic });
              published.set(id, topic as string);
            },
            'OUTBOX_INVALID_TOPIC',
            topic,
          );
          expect(accepted).toBe(many);
          if (!accepted) return;
          const { rows } = await t.pool.query<{ topic: string }>(
            'SELECT topic FROM outbox.messages WHERE topic = $1 AND payload = $2::jsonb',
            [topic, JSON.stringify({ topic })],
          );
          expect(rows.length).toBeGreaterThan(0);
          expect(rows.every((r) => r.topic === topic)).toBe(true);
        }),
        { numRuns: 200 },
      );
      expect(published.size).toBeGreaterThan(10);
      await waitFor('the every-topic subscription received every accepted topic', () =>
        [...published.keys()].every((id) => receivedTopics.has(id)),
      );
      for (const [id, topic] of published) expect(receivedTopics.get(id)).toBe(topic);
    });

    it('rejects a topic filter before any SQL, or stores it as given', async () => {
      await fc.assert(
        fc.asyncProperty(inputs(filterLike), async (filter) => {
          const before = await t.pool.query('SELECT * FROM outbox.subscriptions ORDER BY id');
          const accepted = await acceptedOrRejectedBeforeSql(
            () => outbox.declareSubscription('filter-prop', { topics: [filter as string] }),
            'OUTBOX_INVALID_TOPIC',
            filter,
          );
          const rejectedSubscribe = await acceptedOrRejectedBeforeSql(
            () =>
              createOutbox({ pool: counted.pool, logger: testLogger }).subscribe(
                'filter-prop',
                { topics: [filter as string] },
                () => undefined,
              ),
            'OUTBOX_INVALID_TOPIC',
            filter,
          );
          expect(rejectedSubscribe).toBe(accepted);
          if (!accepted) {
            expect((await t.pool.query('SELECT * FROM outbox.subscriptions ORDER BY id')).rows).toEqual(
              before.rows,
            );
            return;
          }
          const { rows } = await t.pool.query<{ topics: string[] }>(
            `SELECT topics FROM outbox.subscriptions WHERE name = 'filter-prop'`,
          );
          expect(rows).toEqual([{ topics: [filter] }]);
        }),
        { numRuns: 200 },
      );
    });

    it('rejects the topic with the SQL injection before any SQL and writes nothing', async () => {
      const before = await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages');
      expect(
        await acceptedOrRejectedBeforeSql(
          () => outbox.publish(counted.pool, SQL_INJECTION, {}),
          'OUTBOX_INVALID_TOPIC',
          SQL_INJECTION,
        ),
      ).toBe(false);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.messages')).toBe(before);
    });

    it('matches topics case-sensitively: a subscription to order.paid does not receive Order.Paid', async () => {
      const o = t.outbox();
      const seen: string[] = [];
      await o.declareSubscription('case-lower', { topics: ['order.paid'] });
      o.subscribe('case-lower', { topics: ['order.paid'] }, (m) => {
        seen.push(m.topic);
      });
      await o.start();
      await o.publish(t.pool, 'Order.Paid', {});
      const { id } = await o.publish(t.pool, 'order.paid', {});
      await waitFor('every-topic received order.paid', () => receivedTopics.has(id));
      await waitFor('case-lower handled order.paid', () => seen.length > 0);
      await o.stop();
      expect(seen).toEqual(['order.paid']);
      // The relay fanned out only the exact match: Order.Paid has no delivery for case-lower at all.
      const { rows } = await t.pool.query<{ topic: string }>(
        `SELECT topic FROM outbox.message_deliveries WHERE subscription = 'case-lower'`,
      );
      expect(rows).toEqual([{ topic: 'order.paid' }]);
    });
  });

  describe('subscription names', () => {
    it('rejects a subscription name in declareSubscription, subscribe, deadLetters and replay before any SQL, or stores it exactly', async () => {
      await fc.assert(
        fc.asyncProperty(inputs(subscriptionLike), async (name) => {
          const code = 'OUTBOX_INVALID_SUBSCRIPTION';
          const subscriptionsBefore = await count(t.pool, 'SELECT count(*) AS n FROM outbox.subscriptions');
          const declared = await acceptedOrRejectedBeforeSql(
            () => outbox.declareSubscription(name as string, { topics: ['ident.sub'] }),
            code,
            name,
          );
          const results = [
            await acceptedOrRejectedBeforeSql(
              () =>
                createOutbox({ pool: counted.pool, logger: testLogger }).subscribe(
                  name as string,
                  { topics: ['ident.sub'] },
                  () => undefined,
                ),
              code,
              name,
            ),
            await acceptedOrRejectedBeforeSql(() => outbox.deadLetters(name as string), code, name),
            await acceptedOrRejectedBeforeSql(() => outbox.replay(name as string), code, name),
          ];
          expect(results).toEqual([declared, declared, declared]);
          if (!declared) {
            expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.subscriptions')).toBe(
              subscriptionsBefore,
            );
            return;
          }
          const { rows } = await t.pool.query<{ name: string }>(
            'SELECT name FROM outbox.subscriptions WHERE name = $1',
            [name],
          );
          expect(rows).toEqual([{ name }]);
          expect(await outbox.deadLetters(name as string)).toEqual([]);
          expect(await outbox.replay(name as string)).toEqual({ replayed: 0 });
        }),
        { numRuns: 200 },
      );
    });

    it('delivers to accepted subscription names under exactly that name', async () => {
      let run = 0;
      await fc.assert(
        fc.asyncProperty(subscriptionLike, async (name) => {
          fc.pre(name.length <= 100 && name !== 'every-topic');
          const topic = `ident.e2e.run${run++}`;
          const o = t.outbox();
          let got: OutboxMessage | undefined;
          await o.declareSubscription(name, { topics: [topic] });
          o.subscribe(name, { topics: [topic] }, (m) => {
            got = m;
          });
          await o.start();
          try {
            const { id } = await o.publish(t.pool, topic, {});
            await waitFor(`subscription ${name} handled the message`, () => got?.id === id);
          } finally {
            await o.stop();
          }
          expect(got).toMatchObject({ subscription: name, topic });
        }),
        { numRuns: 10 },
      );
    });

    it.each([
      ['the SQL injection', "points'; DELETE FROM outbox.subscriptions; --"],
      ['a quote-escape attempt', SQL_INJECTION],
      ['a space', 'my points'],
      ['a leading hyphen', '-points'],
      ['101 characters', 'x'.repeat(101)],
      ['a NUL character', 'points\u0000'],
      ['a non-ASCII letter', 'pünkte'],
      ['empty', ''],
    ])('rejects the subscription name with %s before any SQL and declares nothing', async (_, name) => {
      const before = await count(t.pool, 'SELECT count(*) AS n FROM outbox.subscriptions');
      expect(
        await acceptedOrRejectedBeforeSql(
          () => outbox.declareSubscription(name, { topics: ['ident.sub'] }),
          'OUTBOX_INVALID_SUBSCRIPTION',
          name,
        ),
      ).toBe(false);
      expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.subscriptions')).toBe(before);
    });

    it('keeps subscription names that differ only in case apart: Points and points are two groups', async () => {
      await outbox.declareSubscription('Points', { topics: ['case.upper'] });
      await outbox.declareSubscription('points', { topics: ['case.lower'] });
      const { rows } = await t.pool.query<{ name: string; topics: string[] }>(
        `SELECT name, topics FROM outbox.subscriptions WHERE lower(name) = 'points' ORDER BY name`,
      );
      expect(rows).toEqual([
        { name: 'Points', topics: ['case.upper'] },
        { name: 'points', topics: ['case.lower'] },
      ]);
    });
  });

  describe('idempotency scopes and keys', () => {
    // Lone UTF-16 surrogates (a string cut inside an emoji) must be rejected: node-postgres would store them as
    // U+FFFD, so two different keys would collide. fast-check's 'binary' unit produces none, hence the extra unit.
    const part = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.string({
        unit: fc.constantFrom('a', '"', '\ud83d', '\ude00', '\ud83d\ude00', '\udbff'),
        maxLength: 6,
      }),
      hostile,
      fc.constantFrom('€'.repeat(341), '€'.repeat(342), 'k'.repeat(1024), 'k'.repeat(1025)),
      nonString(),
    );

    it('rejects a scope or key of once() before any SQL and without running fn, or records it exactly once', async () => {
      await fc.assert(
        fc.asyncProperty(part, part, async (scope, key) => {
          let ran = 0;
          const fn = () => Promise.resolve(++ran);
          const processedBefore = await count(t.pool, 'SELECT count(*) AS n FROM outbox.processed');
          const usesBefore = counted.uses();
          const first = await outcomeOf(() => outbox.once(counted.pool, scope as string, key as string, fn));
          if (!first.ok) {
            expect(first.error).toBeInstanceOf(OutboxError);
            expect(first.error).toMatchObject({ code: 'OUTBOX_INVALID_OPTION' });
            expect([scope, key]).toContain((first.error as OutboxError).value);
            await nextMacrotask();
            expect(counted.uses()).toBe(usesBefore);
            expect(ran).toBe(0);
            expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.processed')).toBe(processedBefore);
            return;
          }
          // The same pair can come up in a later run: then the first call here is a duplicate already.
          const firstRan = (first.value as OnceResult<number>).duplicate ? 0 : 1;
          expect(ran).toBe(firstRan);
          expect(await outbox.once(counted.pool, scope as string, key as string, fn)).toEqual({
            duplicate: true,
          });
          expect(ran).toBe(firstRan);
          const { rows } = await t.pool.query<{ scope: string; key: string }>(
            'SELECT scope, key FROM outbox.processed WHERE scope = $1 AND key = $2',
            [scope, key],
          );
          expect(rows).toEqual([{ scope, key }]);
        }),
        { numRuns: 200 },
      );
    });
  });
});
