import { describe, expect, it } from 'vitest';
import { OutboxError, type PublishOptions } from '../../src/index.js';
import { messageRow } from '../../src/producer/message-input.js';
import { thrown } from '../helpers/thrown.js';

const LIMIT = 1_048_576;

function expectCode(fn: () => unknown, code: string): OutboxError {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(OutboxError);
  expect(error).toMatchObject({ code });
  return error as OutboxError;
}

const row = (payload: unknown, options?: Record<string, unknown>, limit = LIMIT) =>
  messageRow('order.paid', payload, options, limit);

describe('messageRow', () => {
  it('serialises a message without options to a row with nulls and empty headers', () => {
    expect(row({ orderId: 42, items: ['a', 'b'], paid: true })).toEqual({
      topic: 'order.paid',
      key: null,
      payload: '{"orderId":42,"items":["a","b"],"paid":true}',
      headers: '{}',
      jsonBytes: 46,
      deliverAt: null,
      delayMs: null,
      dedupKey: null,
    });
    // UTF-8 bytes, not UTF-16 units: ö is 2 bytes, 😀 4.
    expect(row({ s: 'ö😀' }).jsonBytes).toBe(16);
  });

  it('carries every option into the row', () => {
    const deliverAt = new Date('2030-01-02T03:04:05.678Z');
    expect(
      row(
        {},
        { key: 'order-42', headers: { traceparent: '00-abc', 'x-y': '' }, deliverAt, dedupKey: 'pay-42' },
      ),
    ).toEqual({
      topic: 'order.paid',
      key: 'order-42',
      payload: '{}',
      headers: '{"traceparent":"00-abc","x-y":""}',
      jsonBytes: 35,
      deliverAt,
      delayMs: null,
      dedupKey: 'pay-42',
    });
    expect(row({}, { delayMs: 0 })).toMatchObject({ deliverAt: null, delayMs: 0 });
    expect(row({}, { delayMs: 1500 })).toMatchObject({ deliverAt: null, delayMs: 1500 });
  });

  it('treats undefined and null options as no options', () => {
    expect(row(1, { key: undefined, headers: null, dedupKey: null })).toMatchObject({
      key: null,
      headers: '{}',
      dedupKey: null,
    });
  });

  it.each([
    [null, 'null'],
    ['text', '"text"'],
    [0, '0'],
    [false, 'false'],
    [[1, 'two', null], '[1,"two",null]'],
    [{ when: new Date('2024-01-01T00:00:00Z') }, '{"when":"2024-01-01T00:00:00.000Z"}'],
    ['naïve – 漢字 😀', '"naïve – 漢字 😀"'],
  ])('serialises the JSON payload %j', (payload, json) => {
    expect(row(payload).payload).toBe(json);
  });

  it('checks the topic first, with OUTBOX_INVALID_TOPIC', () => {
    expectCode(
      () => messageRow('order paid', 1n, { bogus: 1 } as PublishOptions, LIMIT),
      'OUTBOX_INVALID_TOPIC',
    );
  });

  it('rejects an unknown option with OUTBOX_UNKNOWN_OPTION naming it and the known ones', () => {
    const error = expectCode(() => row({}, { delay: 5 }), 'OUTBOX_UNKNOWN_OPTION');
    expect(error.value).toBe('delay');
    expect(error.message).toMatch(/delayMs/);
  });

  it('rejects options that are not an object with OUTBOX_INVALID_OPTION', () => {
    expectCode(
      () => messageRow('a', {}, 'fast' as unknown as PublishOptions, LIMIT),
      'OUTBOX_INVALID_OPTION',
    );
  });

  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  it.each([
    ['a BigInt', { amount: 10n }],
    ['a top-level BigInt', 10n],
    ['a cycle', cyclic],
    ['undefined', undefined],
    ['a function', () => 1],
    ['a symbol', Symbol('s')],
    [
      'a toJSON that throws',
      {
        toJSON() {
          throw new Error('no');
        },
      },
    ],
    ['a NUL character in a string', { note: 'a\u0000b' }],
    ['a NUL character in a key', { ['a\u0000b']: 1 }],
  ])('rejects a payload with %s with OUTBOX_INVALID_PAYLOAD', (_, payload) => {
    expectCode(() => row(payload), 'OUTBOX_INVALID_PAYLOAD');
  });

  // message-input.ts toJson(): `json.includes('\\u0000')` also matches the escaped backslash of an ordinary
  // string whose text is backslash-u-0-0-0-0 (JSON "\\u0000"), which jsonb stores without trouble.
  it('accepts a string holding a backslash followed by u0000 (not a NUL)', () => {
    expect(row({ path: 'C:\\u0000' }).payload).toBe('{"path":"C:\\\\u0000"}');
  });

  // message-input.ts toJson(): JSON.stringify escapes a lone surrogate as "\ud800", which jsonb rejects
  // (22P02 "Unicode low surrogate must follow a high surrogate") inside the caller's transaction.
  it('rejects a payload with a lone UTF-16 surrogate with OUTBOX_INVALID_PAYLOAD', () => {
    expectCode(() => row({ name: 'broken \ud800 pair' }), 'OUTBOX_INVALID_PAYLOAD');
  });

  it('accepts a payload of exactly maxPayloadBytes and counts UTF-8 bytes, not characters', () => {
    expect(row('é', {}, 4).payload).toBe('"é"'); // 1 + 2 + 1 bytes
    expectCode(() => row('éé', {}, 5), 'OUTBOX_PAYLOAD_TOO_LARGE');
  });

  it('rejects a payload one byte over maxPayloadBytes with OUTBOX_PAYLOAD_TOO_LARGE and says how to raise it', () => {
    const payload = 'x'.repeat(98); // 100 bytes as JSON
    expect(row(payload, {}, 100).payload).toHaveLength(100);
    const error = expectCode(() => row(payload, {}, 99), 'OUTBOX_PAYLOAD_TOO_LARGE');
    expect(error.value).toBe(100);
    expect(error.message).toMatch(/maxPayloadBytes/);
  });

  it.each([
    ['empty', ''],
    ['513 characters', 'k'.repeat(513)],
    ['a number', 42],
    ['an object', { id: 1 }],
    ['a NUL character', 'a\u0000b'],
  ])('rejects a key that is %s with OUTBOX_INVALID_KEY', (_, key) => {
    expectCode(() => row({}, { key }), 'OUTBOX_INVALID_KEY');
  });

  it('accepts a key of 512 characters', () => {
    expect(row({}, { key: 'k'.repeat(512) }).key).toHaveLength(512);
  });

  it.each([
    ['empty', ''],
    ['513 characters', 'd'.repeat(513)],
    ['a number', 7],
  ])('rejects a dedupKey that is %s with OUTBOX_INVALID_OPTION', (_, dedupKey) => {
    expectCode(() => row({}, { dedupKey }), 'OUTBOX_INVALID_OPTION');
  });

  it.each([
    ['a number value', { retries: 3 }],
    ['a null value', { a: null }],
    ['a nested object', { a: { b: 'c' } }],
    ['an array', ['a', 'b']],
    ['a string', 'a=b'],
  ])('rejects headers with %s with OUTBOX_INVALID_HEADERS', (_, headers) => {
    expectCode(() => row({}, { headers }), 'OUTBOX_INVALID_HEADERS');
  });

  it('rejects deliverAt together with delayMs with OUTBOX_INVALID_OPTION', () => {
    expectCode(() => row({}, { deliverAt: new Date(), delayMs: 10 }), 'OUTBOX_INVALID_OPTION');
  });

  it.each([
    ['an invalid Date', new Date('not a date')],
    ['an ISO string', '2030-01-01T00:00:00Z'],
    ['a number', Date.now()],
    ['null', null],
  ])('rejects deliverAt that is %s with OUTBOX_INVALID_OPTION', (_, deliverAt) => {
    expectCode(() => row({}, { deliverAt }), 'OUTBOX_INVALID_OPTION');
  });

  it.each([-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, '100'])(
    'rejects delayMs = %j with OUTBOX_INVALID_OPTION',
    (delayMs) => {
      expectCode(() => row({}, { delayMs }), 'OUTBOX_INVALID_OPTION');
    },
  );
});

describe('messageRow errors', () => {
  const SECRET = 'Bearer s3cr3t-t0ken';
  const leaks = (error: OutboxError) =>
    `${error.message} ${String(JSON.stringify(error.value))}`.includes('s3cr3t');

  it.each([
    ['a number value', { authorization: SECRET, retries: 3 }],
    ['a nested object', { authorization: SECRET, nested: { token: SECRET } }],
    ['a null value', { authorization: SECRET, trace: null }],
    ['an array', [SECRET]],
    ['a string', `authorization=${SECRET}`],
    ['a NUL character in a value', { authorization: `${SECRET}\u0000` }],
    ['a lone surrogate in a value', { authorization: `${SECRET}\ud800` }],
  ])('never carry a header value when headers hold %s', (_, headers) => {
    const error = expectCode(() => row({}, { headers }), 'OUTBOX_INVALID_HEADERS');
    expect(leaks(error)).toBe(false);
  });

  it('name the header and the type that is wrong, not the headers', () => {
    const error = expectCode(
      () => row({}, { headers: { authorization: SECRET, retries: 3 } }),
      'OUTBOX_INVALID_HEADERS',
    );
    expect(error.value).toEqual({ header: 'retries', type: 'number' });
    expect(error.message).toMatch(/"retries"/);
    expect(expectCode(() => row({}, { headers: [SECRET] }), 'OUTBOX_INVALID_HEADERS').value).toEqual({
      type: 'array',
    });
  });

  it.each([
    ['a BigInt', { token: SECRET, amount: 10n }],
    ['a NUL character', { token: `${SECRET}\u0000` }],
    ['a lone surrogate', { token: `${SECRET}\ud800` }],
  ])('never carry the payload when it holds %s', (_, payload) => {
    expect(leaks(expectCode(() => row(payload), 'OUTBOX_INVALID_PAYLOAD'))).toBe(false);
  });

  it('never carry the payload when it is too large', () => {
    expect(leaks(expectCode(() => row({ token: SECRET }, {}, 10), 'OUTBOX_PAYLOAD_TOO_LARGE'))).toBe(false);
  });

  it.each([
    [
      'the options',
      () => messageRow('a', {}, SECRET as unknown as PublishOptions, LIMIT),
      'OUTBOX_INVALID_OPTION',
      'string',
    ],
    ['the key', () => row({}, { key: { token: SECRET } }), 'OUTBOX_INVALID_KEY', 'object'],
    ['the dedupKey', () => row({}, { dedupKey: { token: SECRET } }), 'OUTBOX_INVALID_OPTION', 'object'],
    ['deliverAt', () => row({}, { deliverAt: { token: SECRET } }), 'OUTBOX_INVALID_OPTION', 'object'],
    ['delayMs', () => row({}, { delayMs: { token: SECRET } }), 'OUTBOX_INVALID_OPTION', 'object'],
  ])('never carry a wrong value passed as %s, only its type', (_, fn, code, type) => {
    const error = expectCode(fn, code);
    expect(leaks(error)).toBe(false);
    expect(error.value).toEqual({ type });
  });
});
