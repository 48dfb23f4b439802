import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, describe, expect, expectTypeOf, it } from 'vitest';
import {
  createOutbox,
  isOutboxError,
  type LeaseContext,
  type OutboxMessage,
  type TransactionalContext,
  type TransactionOf,
  type TypedTopic,
} from '../../src/index.js';
import { testLogger } from '../helpers/outbox.js';
import { thrown } from '../helpers/thrown.js';
import {
  arktypeOrder,
  valibotOrder,
  zodOrder,
  type Order,
  type OrderInput,
} from '../fixtures/order-schemas.js';

// Checked by `npm run typecheck` (tsc), which covers test/. At run time nothing here reaches a database: the pool
// never connects, no consumer starts, and every call below that could write fails validation first.

const zodSchema = zodOrder;
const valibotSchema = valibotOrder;
const arktypeSchema = arktypeOrder;

describe('typed topic types', () => {
  const pool = new pg.Pool({ max: 1 });
  const outbox = createOutbox({ pool, logger: testLogger });
  afterAll(async () => pool.end());

  it("infers the schema's input for publish and its output for handlers, with zod, valibot and arktype", () => {
    expectTypeOf(outbox.topic('order.paid', zodSchema)).toEqualTypeOf<TypedTopic<OrderInput, Order>>();
    expectTypeOf(outbox.topic('order.paid', valibotSchema)).toEqualTypeOf<TypedTopic<OrderInput, Order>>();
    expectTypeOf(outbox.topic('order.paid', arktypeSchema)).toEqualTypeOf<TypedTopic<OrderInput, Order>>();
  });

  it('types publish and publishMany by the input type', async () => {
    const orderPaid = outbox.topic('order.paid', zodSchema);
    expectTypeOf(orderPaid.name).toEqualTypeOf<string>();
    expectTypeOf(orderPaid.publish).parameter(1).toEqualTypeOf<OrderInput>();
    expectTypeOf(orderPaid.publishMany).toBeCallableWith(pool, [
      { payload: { orderId: 'o-1', points: '7' } },
    ]);
    // @ts-expect-error orderId must be a string
    expectTypeOf(orderPaid.publishMany).toBeCallableWith(pool, [{ payload: { orderId: 1, points: 7 } }]);
    const elsewhere = { topic: 'x', payload: { orderId: 'o', points: 7 } };
    // @ts-expect-error the messages go to the typed topic
    expectTypeOf(orderPaid.publishMany).toBeCallableWith(pool, [elsewhere]);

    // A wrong payload is a type error, and validation rejects it before the pool is used.
    // @ts-expect-error orderId must be a string
    const error = await orderPaid.publish(pool, { orderId: 42, points: '7' }).catch((e: unknown) => e);
    expect(isOutboxError(error, 'OUTBOX_INVALID_PAYLOAD')).toBe(true);
  });

  it("types the handler's payload by the output, and its context by the mode", () => {
    const orderPaid = outbox.topic('order.paid', arktypeSchema);
    orderPaid.subscribe('types-transactional', { mode: 'transactional' }, (message, ctx) => {
      expectTypeOf(message).toEqualTypeOf<OutboxMessage<Order>>();
      expectTypeOf(message.payload.points).toEqualTypeOf<number>();
      expectTypeOf(ctx).toEqualTypeOf<TransactionalContext>();
      expectTypeOf(ctx.tx).toEqualTypeOf<pg.PoolClient>();
    });
    orderPaid.subscribe('types-lease', { mode: 'lease', maxAttempts: 3 }, (message, ctx) => {
      expectTypeOf(message.payload).toEqualTypeOf<Order>();
      expectTypeOf(ctx).toEqualTypeOf<LeaseContext>();
    });
    const kysely = new Kysely<Record<string, never>>({ dialect: new PostgresDialect({ pool }) });
    orderPaid.subscribe('types-kysely', { mode: 'transactional', db: kysely }, (message, ctx) => {
      expectTypeOf(message.payload).toEqualTypeOf<Order>();
      expectTypeOf(ctx.tx).toEqualTypeOf<TransactionOf<typeof kysely>>(); // as outbox.subscribe types it
    });
    // @ts-expect-error a lease-mode handler gets no tx
    orderPaid.subscribe('types-no-tx', {}, (_message, ctx: TransactionalContext) => ctx.tx.release());
  });

  it('rejects a pattern, an invalid topic name or a non-schema at outbox.topic()', () => {
    const schema = zodSchema;
    expect(() => outbox.topic('order.*', schema)).toThrow(/needs a topic name, not a pattern/);
    for (const name of ['order.#', '', 'order..paid', 'order paid', 42]) {
      expect(
        isOutboxError(
          thrown(() => outbox.topic(name as string, schema)),
          'OUTBOX_INVALID_TOPIC',
        ),
      ).toBe(true);
    }
    for (const notSchema of [{}, null, 'zod', { '~standard': { version: 2, validate: () => ({}) } }]) {
      const error = thrown(() => outbox.topic('typed.no-schema', notSchema as never));
      expect(isOutboxError(error, 'OUTBOX_INVALID_OPTION')).toBe(true);
    }
  });

  it('rejects topics and schema in the subscribe options, in the types and at run time', () => {
    const orderPaid = outbox.topic('order.paid', valibotSchema);
    const withTopics = thrown(() =>
      // @ts-expect-error the typed topic supplies the topics
      orderPaid.subscribe('types-topics', { topics: ['order.paid'] }, () => undefined),
    );
    const withSchema = thrown(() =>
      // @ts-expect-error the typed topic supplies the schema
      orderPaid.subscribe('types-schema', { schema: zodSchema }, () => undefined),
    );
    expect(isOutboxError(withTopics, 'OUTBOX_INVALID_OPTION')).toBe(true);
    expect(isOutboxError(withSchema, 'OUTBOX_INVALID_OPTION')).toBe(true);
  });
});
