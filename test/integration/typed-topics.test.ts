import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  isOutboxError,
  OutboxError,
  type Outbox,
  type StandardSchemaV1,
  type SubscriptionMode,
} from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { thrown } from '../helpers/thrown.js';
import {
  arktypeOrder,
  valibotOrder,
  zodOrder,
  type Order,
  type OrderInput,
} from '../fixtures/order-schemas.js';

interface Library {
  library: string;
  /** Accepts points as a number or a string of digits; the output is always an integer number. */
  schema: StandardSchemaV1<OrderInput, Order>;
  mode: SubscriptionMode;
}

const libraries: Library[] = [
  {
    library: 'zod',
    schema: zodOrder,
    mode: 'transactional',
  },
  {
    library: 'valibot',
    schema: valibotOrder,
    mode: 'lease',
  },
  {
    library: 'arktype',
    schema: arktypeOrder,
    mode: 'transactional',
  },
];

/** The OutboxError a call rejects with; fails the test on anything else. */
async function rejection(promise: Promise<unknown>): Promise<OutboxError> {
  const error = await promise.then(
    () => new Error('expected a rejection'),
    (e: unknown) => e,
  );
  if (!(error instanceof OutboxError)) throw error;
  return error;
}

describe('typed topics', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  const rows = (topic: string) =>
    count(t.pool, 'SELECT count(*) AS n FROM outbox.messages WHERE topic = $1', [topic]);

  async function settled(outbox: Outbox, subscription: string, done: number, dead = 0) {
    await waitFor(`${subscription}: ${done} done, ${dead} dead`, async () => {
      const status = (await outbox.status()).subscriptions.find((s) => s.name === subscription);
      return status?.doneLastHour === done && status.dead === dead && status.inFlight === 0;
    });
  }

  it.each(libraries)(
    "$library: stores the payload as given and hands the validator's output to the handler ($mode mode)",
    async ({ library, schema, mode }) => {
      const outbox = t.outbox();
      const orderPaid = outbox.topic(`typed.${library}.valid`, schema);
      const seen: Order[] = [];
      orderPaid.subscribe(`typed-${library}-valid`, { mode }, (message) => {
        seen.push(message.payload);
      });
      await outbox.start();
      await orderPaid.publish(t.pool, { orderId: 'o-1', points: '7' }, { key: 'o-1' });
      await orderPaid.publishMany(t.pool, [{ payload: { orderId: 'o-2', points: 3 }, key: 'o-2' }]);
      await settled(outbox, `typed-${library}-valid`, 2);
      await outbox.stop();

      const sql = 'SELECT payload FROM outbox.messages WHERE topic = $1 ORDER BY id';
      const stored = await t.pool.query<{ payload: unknown }>(sql, [orderPaid.name]);
      expect(stored.rows.map((r) => r.payload)).toEqual([
        { orderId: 'o-1', points: '7' },
        { orderId: 'o-2', points: 3 },
      ]);
      expect(seen.sort((a, b) => a.orderId.localeCompare(b.orderId))).toEqual([
        { orderId: 'o-1', points: 7 },
        { orderId: 'o-2', points: 3 },
      ]);
    },
  );

  it.each(libraries)(
    '$library: a publish that fails the schema throws OUTBOX_INVALID_PAYLOAD with the issues and writes nothing',
    async ({ library, schema }) => {
      const orderPaid = t.outbox().topic(`typed.${library}.invalid`, schema);
      const error = await rejection(orderPaid.publish(t.pool, { orderId: 'o-1', points: '2.5' }));
      expect(error.code).toBe('OUTBOX_INVALID_PAYLOAD');
      expect(error.message).toContain(
        `Payload for topic "${orderPaid.name}" failed its schema, nothing was written: points: `,
      );
      // Path and message only: no issue carries the offending value along.
      expect(error.value).toEqual({
        topic: orderPaid.name,
        issues: [{ path: ['points'], message: expect.any(String) as string }],
      });
      expect(await rows(orderPaid.name)).toBe(0);
    },
  );

  it.each(libraries)(
    '$library: publishMany with one failing payload writes none and names its index',
    async ({ library, schema }) => {
      const orderPaid = t.outbox().topic(`typed.${library}.many`, schema);
      const error = await rejection(
        orderPaid.publishMany(t.pool, [
          { payload: { orderId: 'o-1', points: 1 } },
          { payload: { orderId: 'o-2', points: 'many' }, key: 'o-2' },
          { payload: { orderId: 'o-3', points: '3' } },
        ]),
      );
      expect(error.code).toBe('OUTBOX_INVALID_PAYLOAD');
      expect(error.message).toContain(
        `publishMany to topic "${orderPaid.name}": 1 of 3 payloads failed its schema, nothing was written: ` +
          'item 1 (points: ',
      );
      expect(error.value).toMatchObject({ issues: [{ index: 1, path: ['points'] }] });
      expect(await rows(orderPaid.name)).toBe(0);
    },
  );

  it.each(libraries)(
    '$library: a payload published without the schema that fails it is dead-lettered on attempt 1 ($mode mode)',
    async ({ library, schema, mode }) => {
      const outbox = t.outbox();
      const orderPaid = outbox.topic(`typed.${library}.dead`, schema);
      const subscription = `typed-${library}-dead`;
      const seen: string[] = [];
      orderPaid.subscribe(subscription, { mode, maxAttempts: 5 }, (message) => {
        seen.push(message.payload.orderId);
      });
      await outbox.start();
      const bad = await outbox.publish(t.pool, orderPaid.name, { orderId: 'o-bad', points: 'many' });
      await orderPaid.publish(t.pool, { orderId: 'o-good', points: 1 });
      await settled(outbox, subscription, 1, 1);
      await outbox.stop();

      const dead = await outbox.deadLetters(subscription);
      expect(dead.map((d) => [d.messageId, d.attempt])).toEqual([[bad.id, 1]]);
      expect(dead[0]?.lastError).toMatch(
        /^SchemaMismatchError: payload failed the subscription's schema check: points: .+/,
      );
      expect(seen).toEqual(['o-good']);
    },
  );

  it('validates with an async validator before anything is written', async () => {
    const known = new Set(['o-1']);
    const schema = z.object({
      orderId: z.string().refine(async (id) => Promise.resolve(known.has(id)), 'unknown order'),
    });
    const orderPaid = t.outbox().topic('typed.async', schema);
    const error = await rejection(orderPaid.publish(t.pool, { orderId: 'o-2' }));
    expect(error.code).toBe('OUTBOX_INVALID_PAYLOAD');
    expect(error.message).toMatch(/: orderId: unknown order$/);
    expect(await rows('typed.async')).toBe(0);
    await orderPaid.publish(t.pool, { orderId: 'o-1' });
    expect(await rows('typed.async')).toBe(1);
  });

  it('rejects topics or schema in its subscribe options, and a topic in its publishMany items', async () => {
    const orderPaid = t.outbox().topic('typed.options', libraries[0]!.schema);
    const cases = [
      [{ topics: ['other'] }, 'takes no "topics" option'],
      [{ schema: libraries[1]!.schema }, 'takes no "schema" option'],
      [null, 'must be an object'],
    ] as const;
    for (const [options, text] of cases) {
      const error = thrown(() => orderPaid.subscribe('typed-options', options as never, () => undefined));
      expect(isOutboxError(error, 'OUTBOX_INVALID_OPTION') && error.message).toContain(text);
    }
    // None of the rejected calls registered the name.
    orderPaid.subscribe('typed-options', {}, () => undefined);
    const items = [{ topic: 'other', payload: { orderId: 'o-1', points: 1 } }];
    const error = await rejection(orderPaid.publishMany(t.pool, items as never));
    expect(error.code).toBe('OUTBOX_INVALID_OPTION');
    expect(await rows('other')).toBe(0);
  });
});
