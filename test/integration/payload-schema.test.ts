import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isOutboxError, type StandardSchemaV1, type SubscriptionMode } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { thrown } from '../helpers/thrown.js';

interface Order {
  orderId: string;
  points: number;
}

/** A hand-written Standard Schema (what zod, valibot or arktype hand over), async like some of theirs. */
const orderSchema: StandardSchemaV1<unknown, Order> = {
  '~standard': {
    version: 1,
    vendor: 'test',
    async validate(value) {
      await Promise.resolve();
      const v = value as { orderId?: unknown; points?: unknown } | null;
      const issues: StandardSchemaV1.Issue[] = [];
      if (typeof v?.orderId !== 'string') issues.push({ message: 'expected a string', path: ['orderId'] });
      const points = Number(v?.points);
      if (!Number.isInteger(points))
        issues.push({ message: 'expected an integer', path: [{ key: 'points' }] });
      // The output differs from the input (a string of digits becomes a number): handlers see the output.
      return issues.length > 0 ? { issues } : { value: { orderId: v?.orderId as string, points } };
    },
  },
};

describe('payload schema', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it.each<SubscriptionMode>(['lease', 'transactional'])(
    'hands the validated output to the handler and dead-letters a failing payload at once (%s mode)',
    async (mode) => {
      const outbox = t.outbox();
      const seen: Order[] = [];
      const topic = `schema.${mode}`;
      outbox.subscribe(
        `schema-${mode}`,
        { topics: [topic], mode, maxAttempts: 5, schema: orderSchema },
        (m) => {
          const order: Order = m.payload; // typed by the schema's output
          seen.push(order);
        },
      );
      await outbox.start();
      await outbox.publish(t.pool, topic, { orderId: 'o-1', points: '7' });
      const bad = await outbox.publish(t.pool, topic, { orderId: 42, points: 'many' });
      await outbox.publish(t.pool, topic, { orderId: 'o-2', points: 3 });
      const dead = await waitFor('dead letter', async () => {
        const letters = await outbox.deadLetters(`schema-${mode}`);
        return letters.length > 0 ? letters : undefined;
      });
      await waitFor('good ones handled', () => seen.length === 2);
      await outbox.stop();
      // Lease mode runs handlers concurrently: any order.
      expect(seen.sort((a, b) => a.orderId.localeCompare(b.orderId))).toEqual([
        { orderId: 'o-1', points: 7 },
        { orderId: 'o-2', points: 3 },
      ]);
      expect(dead).toHaveLength(1);
      expect(dead[0]?.messageId).toBe(bad.id);
      expect(dead[0]?.attempt).toBe(1);
      expect(dead[0]?.lastError).toBe(
        "SchemaMismatchError: payload failed the subscription's schema check: orderId: expected a string; points: expected an integer",
      );
    },
  );

  it('rejects a schema option that is not a Standard Schema before anything runs', () => {
    const outbox = t.outbox();
    for (const schema of [
      {},
      null,
      'zod',
      { '~standard': { version: 2, validate: () => ({ value: 1 }) } },
      () => true,
    ]) {
      const error = thrown(() =>
        outbox.subscribe('bad-schema', { topics: ['x'], schema: schema as never }, () => undefined),
      );
      expect(isOutboxError(error, 'OUTBOX_INVALID_OPTION')).toBe(true);
    }
  });
});
