import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupOutboxTest, type OutboxTestContext } from '../helpers/outbox.js';

interface Row {
  id: string;
  topic: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  dedup_key: string | null;
  due_in_ms: number | null;
  deliver_at: Date | null;
}

describe('publishMany', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  const stored = async (ids: string[]) =>
    (
      await t.pool.query<Row>(
        `SELECT id::text, topic, key, payload, headers, dedup_key, deliver_at,
                (extract(epoch FROM deliver_at - created_at) * 1000)::float8 AS due_in_ms
         FROM outbox.messages m WHERE m.id = ANY ($1::bigint[]) ORDER BY m.id`,
        [ids],
      )
    ).rows;

  it('stores every option of every message in a mixed call, in input order', async () => {
    const outbox = t.outbox();
    const at = new Date('2030-01-02T03:04:05.678Z');
    const results = await outbox.publishMany(t.pool, [
      { topic: 'mix.a', payload: { n: 0 } },
      { topic: 'mix.b', payload: 'text "quoted" \\ back', key: 'k-1', headers: { trace: 't-1' } },
      { topic: 'mix.a', payload: [1, { deep: null }], deliverAt: at },
      { topic: 'mix.c', payload: null, delayMs: 60_000, dedupKey: 'd-1' },
      { topic: 'mix.a', payload: { emoji: '😀', ä: 'ö' }, headers: {}, key: 'k-2' },
    ]);
    const ids = results.map((r) => r.id);
    expect(results.every((r) => !r.duplicate)).toBe(true);
    expect([...ids].sort((a, b) => Number(BigInt(a) - BigInt(b)))).toEqual(ids);
    const rows = await stored(ids);
    expect(rows.map(({ due_in_ms: _, ...r }) => r)).toEqual([
      {
        id: ids[0],
        topic: 'mix.a',
        key: null,
        payload: { n: 0 },
        headers: {},
        dedup_key: null,
        deliver_at: null,
      },
      {
        id: ids[1],
        topic: 'mix.b',
        key: 'k-1',
        payload: 'text "quoted" \\ back',
        headers: { trace: 't-1' },
        dedup_key: null,
        deliver_at: null,
      },
      {
        id: ids[2],
        topic: 'mix.a',
        key: null,
        payload: [1, { deep: null }],
        headers: {},
        dedup_key: null,
        deliver_at: at,
      },
      {
        id: ids[3],
        topic: 'mix.c',
        key: null,
        payload: null,
        headers: {},
        dedup_key: 'd-1',
        deliver_at: expect.any(Date) as Date,
      },
      {
        id: ids[4],
        topic: 'mix.a',
        key: 'k-2',
        payload: { emoji: '😀', ä: 'ö' },
        headers: {},
        dedup_key: null,
        deliver_at: null,
      },
    ]);
    // delayMs counts from the database's now() at publish.
    expect(rows[3]?.due_in_ms).toBeCloseTo(60_000, -1);
  });

  it('splits a call whose payloads pass 64 MiB into several statements, ids still in input order', async () => {
    // Each statement carries its payloads as one jsonb array, and a jsonb value holds at most 256 MiB.
    const outbox = t.outbox();
    const big = 'x'.repeat(1_048_576 - 64);
    const results = await outbox.publishMany(
      t.pool,
      Array.from({ length: 70 }, (_, n) => ({ topic: 'many.big', payload: { n, big } })),
    );
    const { rows } = await t.pool.query<{ n: number; size: number }>(
      `SELECT (payload->>'n')::int AS n, length(payload->>'big') AS size
       FROM outbox.messages m WHERE m.id = ANY ($1::bigint[]) ORDER BY m.id`,
      [results.map((r) => r.id)],
    );
    expect(rows.map((r) => r.n)).toEqual(Array.from({ length: 70 }, (_, n) => n));
    expect(rows.every((r) => r.size === big.length)).toBe(true);
  });

  it('keeps input order and defaults in a plain call, and a single publish sets only what it is given', async () => {
    const outbox = t.outbox();
    const many = await outbox.publishMany(
      t.pool,
      Array.from({ length: 300 }, (_, n) => ({ topic: 'plain.many', payload: { n } })),
    );
    const rows = await stored(many.map((r) => r.id));
    expect(rows.map((r) => (r.payload as { n: number }).n)).toEqual(Array.from({ length: 300 }, (_, n) => n));
    const one = await outbox.publish(t.pool, 'plain.one', { n: 1 }, { delayMs: 5_000, key: 'k' });
    const [row] = await stored([one.id]);
    expect(row).toMatchObject({ key: 'k', headers: {}, dedup_key: null });
    expect(row?.due_in_ms).toBeCloseTo(5_000, -1);
  });

  it('keeps input order across topics without dedupKeys (one topic sent once, several as an array)', async () => {
    const outbox = t.outbox();
    const input = Array.from({ length: 200 }, (_, n) => ({ topic: `multi.t${n % 3}`, payload: { n } }));
    const results = await outbox.publishMany(t.pool, input);
    const ids = results.map((r) => r.id);
    expect([...ids].sort((a, b) => Number(BigInt(a) - BigInt(b)))).toEqual(ids);
    const rows = await stored(ids);
    expect(rows.map((r) => [r.topic, (r.payload as { n: number }).n])).toEqual(
      input.map((m) => [m.topic, m.payload.n]),
    );
  });
});
