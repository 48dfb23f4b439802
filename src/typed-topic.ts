import { issuesText } from './consumer/payload-schema.js';
import type { Outbox } from './create-outbox.js';
import type { Queryable, TransactionOf } from './db/executor.js';
import { OutboxError } from './errors.js';
import { isStandardSchema } from './subscribe-options.js';
import { assertTopic } from './topics.js';
import type {
  Handler,
  LeaseContext,
  PublishOptions,
  PublishResult,
  StandardSchemaV1,
  SubscribeOptions,
  TransactionalContext,
} from './types.js';

/** What a Standard Schema accepts: the payload type of a typed topic's publish. */
export type InferSchemaInput<S extends StandardSchemaV1> = NonNullable<S['~standard']['types']>['input'];

/** What a Standard Schema returns: the payload type a typed topic's handlers receive. */
export type InferSchemaOutput<S extends StandardSchemaV1> = NonNullable<S['~standard']['types']>['output'];

/** Subscription options of a typed topic: everything but `topics` and `schema`, which the topic supplies. */
export type TopicSubscribeOptions = Omit<SubscribeOptions, 'topics' | 'schema'>;

/** One message of a typed topic's publishMany: the payload and the usual publish options, no topic. */
export interface TypedPublishInput<Input> extends PublishOptions {
  payload: Input;
  /** Not taken: the messages go to the typed topic (a topic key is rejected with OUTBOX_INVALID_OPTION). */
  topic?: never;
}

/**
 * One problem the topic's schema found in a payload, as OUTBOX_INVALID_PAYLOAD carries it in
 * `error.value.issues`: only the path and the validator's message, never the offending value.
 */
export interface TopicPayloadIssue {
  /** publishMany: the position of the failing message in the call. */
  index?: number;
  /** Where in the payload, e.g. `['items', 0, 'sku']`; empty for the payload as a whole. */
  path: PropertyKey[];
  message: string;
}

/** A topic declared once with its payload schema; see Outbox.topic. */
export interface TypedTopic<Input, Output> {
  /** The topic name messages are published to. */
  readonly name: string;
  readonly schema: StandardSchemaV1<Input, Output>;
  /**
   * Validates the payload (async validators too), then publishes it as given, not the validator's output: the
   * consumer validates again, and a transform need not be idempotent or JSON-safe. A payload that fails throws
   * OUTBOX_INVALID_PAYLOAD and nothing is written.
   */
  publish(this: void, db: Queryable, payload: Input, options?: PublishOptions): Promise<PublishResult>;
  /** Like publish, for many messages in one statement: all are validated before any is written. */
  publishMany(
    this: void,
    db: Queryable,
    messages: readonly TypedPublishInput<Input>[],
  ): Promise<PublishResult[]>;
  /**
   * outbox.subscribe with `topics: [name]` and `schema`: the handler receives the schema's output, and a payload
   * that fails the schema is dead-lettered on its first attempt without reaching the handler. The options and the
   * handler's context are outbox.subscribe's (transactional mode: `ctx.tx`, of the `db` library when given).
   */
  subscribe<D extends Queryable>(
    this: void,
    name: string,
    options: TopicSubscribeOptions & { mode: 'transactional'; db: D },
    handler: Handler<TransactionalContext<TransactionOf<D>>, Output>,
  ): void;
  subscribe(
    this: void,
    name: string,
    options: TopicSubscribeOptions & { mode: 'transactional' },
    handler: Handler<TransactionalContext, Output>,
  ): void;
  subscribe(
    this: void,
    name: string,
    options: TopicSubscribeOptions,
    handler: Handler<LeaseContext, Output>,
  ): void;
}

/** Most failing messages a publishMany error names in its text; `value.issues` holds them all. */
const MAX_ITEMS_IN_MESSAGE = 10;

type TopicHost = Pick<Outbox, 'publish' | 'publishMany' | 'subscribe'>;

export function createTypedTopic<S extends StandardSchemaV1>(
  host: TopicHost,
  name: string,
  schema: S,
): TypedTopic<InferSchemaInput<S>, InferSchemaOutput<S>> {
  assertTypedTopicName(name);
  assertStandardSchema(name, schema);
  return {
    name,
    schema,
    async publish(db, payload, options) {
      const issues = await validate(schema, payload);
      if (issues.length > 0) {
        const text = `Payload for topic "${name}" failed its schema, nothing was written: ${issuesText(issues)}`;
        throw invalidPayload(name, text, issues);
      }
      return host.publish(db, name, payload, options);
    },
    async publishMany(db, messages) {
      assertMessages(name, messages);
      const checked = await Promise.all(messages.map((m) => validate(schema, m.payload)));
      const issues = checked.flatMap((found, index) => found.map((issue) => ({ index, ...issue })));
      if (issues.length > 0) throw invalidPayload(name, manyText(name, messages.length, checked), issues);
      return host.publishMany(
        db,
        messages.map((m) => ({ ...m, topic: name })),
      );
    },
    subscribe(
      subscription: string,
      options: TopicSubscribeOptions,
      handler:
        | Handler<LeaseContext, InferSchemaOutput<S>>
        | Handler<TransactionalContext<never>, InferSchemaOutput<S>>,
    ) {
      assertTopicSubscribeOptions(name, options);
      // The options' mode picks the context at run time; the overloads above tie it to the handler's type.
      host.subscribe(subscription, { ...options, topics: [name], schema }, handler as Handler<LeaseContext>);
    },
  };
}

function assertTypedTopicName(name: unknown): asserts name is string {
  if (typeof name === 'string' && name.split('.').some((s) => s === '*' || s === '#')) {
    throw new OutboxError(
      'OUTBOX_INVALID_TOPIC',
      `topic(${JSON.stringify(name)}) needs a topic name, not a pattern: a typed topic is published to; ` +
        'subscribe to patterns with outbox.subscribe',
      { value: name },
    );
  }
  assertTopic(name);
}

function assertStandardSchema(name: string, schema: unknown): void {
  if (!isStandardSchema(schema)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `topic("${name}") needs a Standard Schema v1 validator (zod 3.24+, valibot 1, arktype 2, ...)`,
      { value: typeof schema },
    );
  }
}

function assertMessages(name: string, messages: unknown): asserts messages is TypedPublishInput<unknown>[] {
  const valid =
    Array.isArray(messages) &&
    messages.every((m) => typeof m === 'object' && m !== null && !Object.hasOwn(m as object, 'topic'));
  if (!valid) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `publishMany of topic "${name}" expects an array of { payload, ...options }, without a topic`,
    );
  }
}

function assertTopicSubscribeOptions(name: string, options: unknown): void {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `subscribe options of topic "${name}" must be an object`, {
      value: options === null ? 'null' : typeof options,
    });
  }
  for (const key of ['topics', 'schema']) {
    if (Object.hasOwn(options, key)) {
      throw new OutboxError(
        'OUTBOX_INVALID_OPTION',
        `subscribe of topic "${name}" takes no "${key}" option: the typed topic supplies its name and schema ` +
          '(use outbox.subscribe for other topics or schemas)',
        { value: key },
      );
    }
  }
}

async function validate(schema: StandardSchemaV1, payload: unknown): Promise<TopicPayloadIssue[]> {
  const result = await schema['~standard'].validate(payload);
  if (result.issues === undefined) return [];
  // Copy path and message only: validators also put the offending value on an issue (valibot's input,
  // arktype's data), and an error never carries payload data.
  // Array.from: issues and paths may be array subclasses (arktype's), whose map() would keep the subclass.
  return Array.from(result.issues, (issue) => ({
    path: Array.from(issue.path ?? [], (p) => (typeof p === 'object' ? p.key : p)),
    message: issue.message,
  }));
}

/** publishMany's error text: how many failed, and the first of them by index with their issues. */
function manyText(name: string, total: number, checked: TopicPayloadIssue[][]): string {
  const failing = checked.flatMap((issues, index) => (issues.length > 0 ? [{ index, issues }] : []));
  const listed = failing
    .slice(0, MAX_ITEMS_IN_MESSAGE)
    .map((f) => `item ${f.index} (${issuesText(f.issues)})`);
  const more = failing.length > listed.length ? `, and ${failing.length - listed.length} more` : '';
  return (
    `publishMany to topic "${name}": ${failing.length} of ${total} payloads failed its schema, nothing was ` +
    `written: ${listed.join(', ')}${more}`
  );
}

function invalidPayload(name: string, message: string, issues: TopicPayloadIssue[]): OutboxError {
  return new OutboxError('OUTBOX_INVALID_PAYLOAD', message, { value: { topic: name, issues } });
}
