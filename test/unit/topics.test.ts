import { describe, expect, it } from 'vitest';
import { OutboxError } from '../../src/index.js';
import { assertSubscriptionName, assertTopic, topicFilter } from '../../src/topics.js';
import { thrown } from '../helpers/thrown.js';

function matches(filter: string[], topic: string): boolean {
  const { exact, pattern } = topicFilter(filter);
  return exact.includes(topic) || (pattern !== null && new RegExp(pattern).test(topic));
}

describe('assertTopic', () => {
  it.each([
    'order',
    'order.paid',
    'Order.Paid',
    'a-b_c.D9.x',
    '0',
    `${'a'.repeat(98)}.${'b'.repeat(101)}`, // 200 characters
  ])('accepts the topic %j', (topic) => {
    expect(() => assertTopic(topic)).not.toThrow();
  });

  it.each([
    '',
    '.',
    'order.',
    '.order',
    'order..paid',
    'order.*',
    'order.#',
    '*',
    'order paid',
    'order/paid',
    'order:paid',
    'ordér.paid',
    'order.paid\n',
    'a'.repeat(201),
  ])('rejects the topic %j with OUTBOX_INVALID_TOPIC and names it in the error', (topic) => {
    const error = thrown(() => assertTopic(topic));
    expect(error).toBeInstanceOf(OutboxError);
    expect(error).toMatchObject({ code: 'OUTBOX_INVALID_TOPIC', value: topic });
    expect((error as Error).message).toContain(JSON.stringify(topic));
  });

  it.each([undefined, null, 42, ['order'], { topic: 'order' }])(
    'rejects the non-string topic %j with OUTBOX_INVALID_TOPIC',
    (topic) => {
      expect(thrown(() => assertTopic(topic))).toMatchObject({ code: 'OUTBOX_INVALID_TOPIC' });
    },
  );
});

describe('assertSubscriptionName', () => {
  it.each(['points', 'Points-2', 'billing.invoices:v2', '9lives', 'a'.repeat(100)])(
    'accepts the subscription name %j',
    (name) => {
      expect(() => assertSubscriptionName(name)).not.toThrow();
    },
  );

  it.each(['', '-points', '_points', 'points!', 'my points', 'pöints', 'a'.repeat(101), 42, null])(
    'rejects the subscription name %j with OUTBOX_INVALID_SUBSCRIPTION',
    (name) => {
      expect(thrown(() => assertSubscriptionName(name))).toMatchObject({
        code: 'OUTBOX_INVALID_SUBSCRIPTION',
        value: name,
      });
    },
  );
});

describe('topicFilter', () => {
  it('keeps exact names out of the regex and compiles no pattern when there is no wildcard', () => {
    expect(topicFilter(['order.paid', 'user.created'])).toEqual({
      topics: ['order.paid', 'user.created'],
      exact: ['order.paid', 'user.created'],
      pattern: null,
    });
  });

  it('drops duplicate entries', () => {
    expect(topicFilter(['order.paid', 'order.*', 'order.paid', 'order.*'])).toMatchObject({
      topics: ['order.paid', 'order.*'],
      exact: ['order.paid'],
    });
  });

  it('compiles "*" to exactly one segment and "#" to one or more, with escaped dots, anchored', () => {
    const segment = '[A-Za-z0-9_-]+';
    expect(topicFilter(['order.*']).pattern).toBe(`^(order\\.${segment})$`);
    expect(topicFilter(['order.#']).pattern).toBe(`^(order\\.${segment}(\\.${segment})*)$`);
    expect(topicFilter(['order.paid', '*.paid', 'user.#']).pattern).toBe(
      `^(${segment}\\.paid|user\\.${segment}(\\.${segment})*)$`,
    );
  });

  it.each([
    [['order.*'], 'order.paid', true],
    [['order.*'], 'order.paid-late', true],
    [['order.*'], 'order', false],
    [['order.*'], 'order.paid.late', false],
    [['order.*'], 'orders.paid', false],
    [['order.*'], 'xorder.paid', false],
    [['order.*'], 'my.order.paid', false],
    [['order.#'], 'order.paid', true],
    [['order.#'], 'order.paid.late.again', true],
    [['order.#'], 'order', false],
    [['order.#'], 'orderx.paid', false],
    [['order.#'], 'user.order.paid', false],
    [['*.paid'], 'order.paid', true],
    [['*.paid'], 'paid', false],
    [['*.paid'], 'a.order.paid', false],
    [['*.paid'], 'order.paidx', false],
    [['a.*.c'], 'a.b.c', true],
    [['a.*.c'], 'a.c', false],
    [['a.*.c'], 'a.b.b.c', false],
    [['*'], 'order', true],
    [['*'], 'order.paid', false],
    [['#'], 'order', true],
    [['#'], 'order.paid.late', true],
    [['*.*'], 'order.paid', true],
    [['*.*'], 'order', false],
    [['order.*', 'user.#'], 'user.a.b', true],
    [['order.*', 'user.#'], 'order.a.b', false],
    [['order.*', 'user.#'], 'order.a', true],
    [['order.paid'], 'order.paid', true],
    [['order.paid'], 'order.paidx', false],
    [['order.paid'], 'order', false],
  ] as const)('filter %j matches %j: %s', (filter, topic, expected) => {
    expect(matches([...filter], topic)).toBe(expected);
  });

  it('rejects "#" anywhere but the last segment with OUTBOX_INVALID_TOPIC', () => {
    for (const filter of ['#.paid', 'order.#.paid']) {
      expect(thrown(() => topicFilter([filter]))).toMatchObject({
        code: 'OUTBOX_INVALID_TOPIC',
        value: filter,
      });
    }
  });

  it.each([
    'order.pa*',
    'order.*x',
    'order.##',
    'order.',
    '.order',
    'order..paid',
    'or der',
    '',
    'a'.repeat(201),
  ])('rejects the topic filter %j with OUTBOX_INVALID_TOPIC', (filter) => {
    expect(thrown(() => topicFilter(['order.paid', filter]))).toMatchObject({
      code: 'OUTBOX_INVALID_TOPIC',
      value: filter,
    });
  });

  it('rejects a regex meta-character in a filter instead of compiling it', () => {
    for (const filter of ['order.(paid|x)', 'order.paid$', 'order.[a-z]+', 'order.p.+']) {
      expect(thrown(() => topicFilter([filter]))).toMatchObject({ code: 'OUTBOX_INVALID_TOPIC' });
    }
  });

  it.each([[[]], [undefined], ['order.paid'], [{ 0: 'order.paid' }]])(
    'rejects topics %j (not a non-empty array) with OUTBOX_INVALID_OPTION',
    (topics) => {
      expect(thrown(() => topicFilter(topics))).toMatchObject({ code: 'OUTBOX_INVALID_OPTION' });
    },
  );

  it('rejects a non-string entry with OUTBOX_INVALID_TOPIC', () => {
    expect(thrown(() => topicFilter(['order.paid', 7]))).toMatchObject({
      code: 'OUTBOX_INVALID_TOPIC',
      value: 7,
    });
  });
});
