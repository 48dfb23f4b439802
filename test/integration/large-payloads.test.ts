import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OutboxError, type Outbox, type OutboxMessage, type PublishInput } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// Large payloads must arrive byte for byte in both consumer modes, and the size limit (UTF-8 bytes of the
// payload's JSON text, see message-input.ts) must reject before anything is written.

const KiB = 1024;
const MiB = 1024 * KiB;
const TOPIC = 'large.payload';

const jsonBytes = (value: unknown) => Buffer.byteLength(JSON.stringify(value), 'utf8');

/** A small deterministic PRNG (mulberry32), so a failing payload can be rebuilt from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

// Multi-byte letters, 4-byte emoji (valid surrogate pairs), combining sequences, right-to-left scripts and
// characters JSON has to escape.
const WORDS = [
  'order',
  'Grüße',
  'Köln',
  'naïve',
  'façade',
  '東京',
  '日本語のテキスト',
  'Ελληνικά',
  'עברית',
  'русский',
  'العربية',
  '🚀',
  '👩‍💻',
  '🇩🇪',
  'e\u0301',
  'quote"d',
  'back\\slash',
  'tab\there',
  'line\nbreak',
  'control\u0001',
  'separator\u2028',
];

function randomText(bytes: number, random: () => number): string {
  const parts: string[] = [];
  let size = 0;
  while (size < bytes) {
    const word = WORDS[Math.floor(random() * WORDS.length)] ?? 'x';
    parts.push(word);
    // The escaped size inside the JSON string, plus the separating space.
    size += jsonBytes(word) - 2 + 1;
  }
  return parts.join(' ');
}

type Nested = { depth: number; label: string; child?: Nested };

/**
 * A JSON object whose JSON text is exactly `bytes` bytes of UTF-8: a long multilingual string, a nested
 * chain, an array of records, numbers jsonb stores as numeric, and an ASCII pad that makes the size exact.
 */
function payloadOf(bytes: number, seed: number): Record<string, unknown> {
  const random = prng(seed);
  let nested: Nested = { depth: 0, label: 'leaf 🌱' };
  for (let depth = 1; depth <= (bytes < 4 * KiB ? 3 : 32); depth++) {
    nested = { depth, label: `level ${depth} — ébène`, child: nested };
  }
  const items = Array.from({ length: Math.min(2_000, Math.floor(bytes / (4 * KiB))) }, (_, i) => ({
    i,
    sku: `SKU-${i}-ß`,
    price: Math.round(random() * 1_000_000) / 100,
    tags: ['α', 'β', '🏷️'],
    ok: i % 2 === 0,
    note: null,
  }));
  const payload = {
    kind: 'large-payload',
    seed,
    numbers: [0, -1, 3.25, 0.1 + 0.2, 1e21, -1.5e-7, Number.MAX_SAFE_INTEGER],
    flags: [true, false, null],
    escapes: 'quote " backslash \\ slash / newline \n tab \t control \u0001\u001f',
    nested,
    items,
    text: '',
    pad: '',
  };
  const skeleton = jsonBytes(payload);
  if (skeleton + 64 > bytes) throw new Error(`payloadOf(${bytes}): the skeleton alone is ${skeleton} bytes`);
  payload.text = randomText(bytes - skeleton - 64, random);
  const rest = bytes - jsonBytes(payload);
  if (rest < 0) throw new Error(`payloadOf(${bytes}): overshot by ${-rest} bytes`);
  payload.pad = 'x'.repeat(rest);
  return payload;
}

/** `{"s":"…"}` of exactly `bytes` bytes of JSON, filled with `unit` and padded with ASCII. */
function stringPayloadOf(bytes: number, unit: string): { s: string } {
  const unitBytes = jsonBytes(unit) - 2;
  const room = bytes - jsonBytes({ s: '' });
  const s = unit.repeat(Math.floor(room / unitBytes));
  return { s: s + 'x'.repeat(room - jsonBytes(s) + 2) };
}

/** Where two JSON values first differ ('$.text[17]: ...'), or null when they are deep-equal. */
function firstDifference(actual: unknown, expected: unknown, path = '$'): string | null {
  if (typeof actual !== typeof expected || Array.isArray(actual) !== Array.isArray(expected)) {
    return `${path}: ${typeof actual} instead of ${typeof expected}`;
  }
  if (typeof expected === 'string' && typeof actual === 'string') {
    if (actual === expected) return null;
    let i = 0;
    while (i < expected.length && actual[i] === expected[i]) i++;
    return `${path}[${i}]: ${JSON.stringify(actual.slice(i, i + 20))} instead of ${JSON.stringify(expected.slice(i, i + 20))} (lengths ${actual.length} and ${expected.length})`;
  }
  if (typeof expected !== 'object' || expected === null || actual === null) {
    return Object.is(actual, expected)
      ? null
      : `${path}: ${JSON.stringify(actual)} instead of ${JSON.stringify(expected)}`;
  }
  const a = actual as Record<string, unknown>;
  const e = expected as Record<string, unknown>;
  const keys = Object.keys(e);
  if (Object.keys(a).length !== keys.length) {
    return `${path}: keys ${JSON.stringify(Object.keys(a))} instead of ${JSON.stringify(keys)}`;
  }
  for (const key of keys) {
    if (!(key in a)) return `${path}: missing ${key}`;
    const difference = firstDifference(a[key], e[key], `${path}.${key}`);
    if (difference !== null) return difference;
  }
  return null;
}

async function rejectionOf(action: () => Promise<unknown>): Promise<unknown> {
  return action().then(
    () => {
      throw new Error('expected the call to fail');
    },
    (error: unknown) => error,
  );
}

describe('large payloads', () => {
  let t: OutboxTestContext;
  /** Default maxPayloadBytes (1 MiB). */
  let outbox: Outbox;
  /** maxPayloadBytes raised to 16 MiB. */
  let big: Outbox;
  /** Message id -> subscription -> what the handler received. */
  const received = new Map<string, Map<string, OutboxMessage>>();
  const messages = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.messages');

  const record = (m: OutboxMessage) => {
    const bySubscription = received.get(m.id) ?? new Map<string, OutboxMessage>();
    bySubscription.set(m.subscription, m);
    received.set(m.id, bySubscription);
  };

  beforeAll(async () => {
    t = await setupOutboxTest();
    outbox = t.outbox();
    big = t.outbox({ maxPayloadBytes: 16 * MiB });
    const consumers = t.outbox();
    await consumers.declareSubscription('large-lease', { topics: [TOPIC] });
    await consumers.declareSubscription('large-transactional', { topics: [TOPIC] });
    consumers.subscribe('large-lease', { topics: [TOPIC], mode: 'lease' }, (m) => record(m));
    consumers.subscribe('large-transactional', { topics: [TOPIC], mode: 'transactional' }, async (m, ctx) => {
      // Read through the handler's transaction, so the delivery is acked in a transaction that did some work.
      await ctx.tx.query('SELECT 1');
      record(m);
    });
    await consumers.start();
  });
  afterAll(async () => t.close());

  describe('round trip', () => {
    it.each([
      { title: 'about 1 KiB', bytes: KiB + 17, limit: 'default' },
      { title: 'exactly 1 MiB, the default limit', bytes: MiB, limit: 'default' },
      { title: 'about 10 MiB', bytes: 10 * MiB + 123, limit: 'raised to 16 MiB' },
    ])(
      'delivers a payload of $title (limit $limit) intact to a lease-mode and a transactional-mode subscription',
      async ({ bytes, limit }) => {
        const payload = payloadOf(bytes, bytes);
        expect(jsonBytes(payload)).toBe(bytes);
        const publisher = limit === 'default' ? outbox : big;
        const client = await t.pool.connect();
        let id: string;
        try {
          await client.query('BEGIN');
          ({ id } = await publisher.publish(client, TOPIC, payload, {
            key: 'schlüssel-🔑',
            headers: { 'content-language': 'de-CH, 日本' },
          }));
          await client.query('COMMIT');
        } finally {
          client.release();
        }

        const got = await waitFor(
          'both subscriptions handled the message',
          () => (received.get(id)?.size === 2 ? received.get(id) : undefined),
          40_000,
        );
        for (const subscription of ['large-lease', 'large-transactional']) {
          const m = got.get(subscription);
          expect(m).toMatchObject({
            id,
            topic: TOPIC,
            key: 'schlüssel-🔑',
            headers: { 'content-language': 'de-CH, 日本' },
          });
          expect(firstDifference(m?.payload, payload), subscription).toBeNull();
        }
        received.delete(id);
      },
    );

    it('delivers 1 KiB and 1 MiB payloads sent together by publishMany intact in both modes', async () => {
      const batch = [payloadOf(KiB, 1), payloadOf(MiB - 1, 2)];
      const results = await outbox.publishMany(
        t.pool,
        batch.map((payload): PublishInput => ({ topic: TOPIC, payload })),
      );
      for (const [index, { id }] of results.entries()) {
        const got = await waitFor('both subscriptions handled the message', () =>
          received.get(id)?.size === 2 ? received.get(id) : undefined,
        );
        for (const m of got.values()) expect(firstDifference(m.payload, batch[index])).toBeNull();
        received.delete(id);
      }
    });
  });

  describe('over the limit', () => {
    it('rejects a payload one byte over the default 1 MiB with OUTBOX_PAYLOAD_TOO_LARGE and writes nothing', async () => {
      const payload = payloadOf(MiB + 1, 3);
      const before = await messages();
      const error = await rejectionOf(() => outbox.publish(t.pool, TOPIC, payload));
      expect(error).toBeInstanceOf(OutboxError);
      expect(error).toMatchObject({ code: 'OUTBOX_PAYLOAD_TOO_LARGE', value: MiB + 1 });
      expect(await messages()).toBe(before);
    });

    it('rejects a 10 MiB payload on an Outbox with the default limit and writes nothing', async () => {
      const payload = payloadOf(10 * MiB, 4);
      const before = await messages();
      const error = await rejectionOf(() => outbox.publish(t.pool, TOPIC, payload));
      expect(error).toMatchObject({ code: 'OUTBOX_PAYLOAD_TOO_LARGE', value: 10 * MiB });
      expect(await messages()).toBe(before);
    });

    it('rejects a publishMany batch with one oversize message among valid ones and writes none of it', async () => {
      const batch: PublishInput[] = [
        { topic: TOPIC, payload: { n: 1 } },
        { topic: TOPIC, payload: payloadOf(MiB + 1, 5) },
        { topic: TOPIC, payload: payloadOf(KiB, 6) },
      ];
      const before = await messages();
      const error = await rejectionOf(() => outbox.publishMany(t.pool, batch));
      expect(error).toBeInstanceOf(OutboxError);
      expect(error).toMatchObject({ code: 'OUTBOX_PAYLOAD_TOO_LARGE', value: MiB + 1 });
      expect(await messages()).toBe(before);
    });

    it('rejects an oversize publishMany inside the caller’s transaction, which stays usable and commits only its own message', async () => {
      const before = await messages();
      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        const kept = await outbox.publish(client, 'large.kept', { kept: true });
        const error = await rejectionOf(() =>
          outbox.publishMany(client, [
            { topic: TOPIC, payload: { n: 1 } },
            { topic: TOPIC, payload: payloadOf(2 * MiB, 7) },
          ]),
        );
        expect(error).toMatchObject({ code: 'OUTBOX_PAYLOAD_TOO_LARGE' });
        await client.query('COMMIT');
        expect(await messages()).toBe(before + 1);
        const { rows } = await t.pool.query<{ id: string }>(
          'SELECT id FROM outbox.messages ORDER BY id DESC LIMIT 1',
        );
        expect(rows).toEqual([{ id: kept.id }]);
      } finally {
        await client.query('ROLLBACK').catch(() => undefined);
        client.release();
      }
    });
  });

  describe('the limit boundary', () => {
    let small: Outbox;
    beforeAll(() => {
      small = t.outbox({ maxPayloadBytes: KiB });
    });

    it.each([
      { what: 'ASCII', unit: 'a' },
      { what: '2-byte characters', unit: 'é' },
      { what: '3-byte characters', unit: '€' },
      { what: '4-byte emoji', unit: '🚀' },
      { what: 'characters JSON escapes', unit: '"' },
    ])(
      'accepts a payload of exactly maxPayloadBytes in $what and rejects one byte more',
      async ({ unit }) => {
        const exact = stringPayloadOf(KiB, unit);
        const over = stringPayloadOf(KiB + 1, unit);
        expect([jsonBytes(exact), jsonBytes(over)]).toEqual([KiB, KiB + 1]);
        const before = await messages();

        const error = await rejectionOf(() => small.publish(t.pool, 'large.boundary', over));
        expect(error).toMatchObject({ code: 'OUTBOX_PAYLOAD_TOO_LARGE', value: KiB + 1 });
        expect(await messages()).toBe(before);

        const { id } = await small.publish(t.pool, 'large.boundary', exact);
        const { rows } = await t.pool.query<{ payload: unknown }>(
          'SELECT payload FROM outbox.messages WHERE id = $1',
          [id],
        );
        expect(rows).toEqual([{ payload: exact }]);
      },
    );

    it('counts bytes, not characters: 400 three-byte characters (1,208 bytes) are over a 1 KiB limit', async () => {
      const payload = { s: '€'.repeat(400) };
      expect(payload.s.length).toBeLessThan(KiB);
      const error = await rejectionOf(() => small.publish(t.pool, 'large.boundary', payload));
      expect(error).toMatchObject({ code: 'OUTBOX_PAYLOAD_TOO_LARGE', value: jsonBytes(payload) });
    });
  });
});
