import { OutboxError } from './errors.js';

const SEGMENT = '[A-Za-z0-9_-]+';
const TOPIC = new RegExp(`^${SEGMENT}(\\.${SEGMENT})*$`);
const MAX_TOPIC_LENGTH = 200;
const SUBSCRIPTION_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$/;

/** Checks a topic a message is published to: dot-separated segments of letters, digits, `_` and `-`. */
export function assertTopic(topic: unknown): asserts topic is string {
  if (typeof topic !== 'string' || topic.length > MAX_TOPIC_LENGTH || !TOPIC.test(topic)) {
    throw new OutboxError(
      'OUTBOX_INVALID_TOPIC',
      `Invalid topic ${JSON.stringify(topic)}: use dot-separated segments of letters, digits, _ and - ` +
        `(e.g. "order.paid"), at most ${MAX_TOPIC_LENGTH} characters`,
      { value: topic },
    );
  }
}

export function assertSubscriptionName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !SUBSCRIPTION_NAME.test(name)) {
    throw new OutboxError(
      'OUTBOX_INVALID_SUBSCRIPTION',
      `Invalid subscription name ${JSON.stringify(name)}: use 1-100 characters of letters, digits, _ . : -, ` +
        'starting with a letter or digit',
      { value: name },
    );
  }
}

/** A subscription's topic filter: exact names matched by equality, patterns by one anchored regex. */
export interface TopicFilter {
  readonly topics: string[];
  readonly exact: string[];
  /** Postgres regular expression for the patterns, or null when there are none. */
  readonly pattern: string | null;
}

function patternToRegex(pattern: string): string {
  const segments = pattern.split('.');
  return segments
    .map((segment, index) => {
      if (segment === '*') return SEGMENT;
      if (segment === '#') return `${SEGMENT}(\\.${SEGMENT})*`;
      // Letters, digits, _ and - have no meaning in a regex; nothing to escape.
      return index === segments.length - 1 && segment === '' ? '' : segment;
    })
    .join('\\.');
}

function assertTopicPattern(pattern: unknown): asserts pattern is string {
  const segments = typeof pattern === 'string' ? pattern.split('.') : [];
  const valid =
    typeof pattern === 'string' &&
    pattern.length <= MAX_TOPIC_LENGTH &&
    segments.every(
      (s, i) => s === '*' || (s === '#' && i === segments.length - 1) || new RegExp(`^${SEGMENT}$`).test(s),
    );
  if (!valid) {
    throw new OutboxError(
      'OUTBOX_INVALID_TOPIC',
      `Invalid topic filter ${JSON.stringify(pattern)}: use a topic name, "*" for exactly one segment ` +
        '(e.g. "order.*"), or "#" as the last segment for one or more (e.g. "order.#")',
      { value: pattern },
    );
  }
}

/** Validates a subscription's topics and compiles its patterns. */
export function topicFilter(topics: unknown): TopicFilter {
  if (!Array.isArray(topics) || topics.length === 0) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'topics must be a non-empty array of topic names or patterns',
      {
        value: topics,
      },
    );
  }
  const unique = [...new Set(topics.map((t: unknown) => (assertTopicPattern(t), t)))];
  const isPattern = (t: string) => t.split('.').some((s) => s === '*' || s === '#');
  const patterns = unique.filter(isPattern);
  return {
    topics: unique,
    exact: unique.filter((t) => !isPattern(t)),
    pattern: patterns.length === 0 ? null : `^(${patterns.map(patternToRegex).join('|')})$`,
  };
}
