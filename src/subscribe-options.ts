import { adapterFor } from './db/adapters/index.js';
import type { Queryable } from './db/executor.js';
import { OutboxError } from './errors.js';
import { resolveKeyConcurrency, resolveRateLimit, type StoredRateLimit } from './flow-options.js';
import { assertKnownKeys, boolean, DAY_MS, integer, objectOrEmpty } from './option-checks.js';
import { topicFilter, type TopicFilter } from './topics.js';
import type { StandardSchemaV1, SubscribeOptions, SubscriptionMode } from './types.js';

export interface ResolvedSubscribeOptions {
  filter: TopicFilter;
  schema: StandardSchemaV1 | undefined;
  mode: SubscriptionMode;
  /** Transactional mode: the library that opens the handler transactions (undefined: the Outbox's pool). */
  db: Queryable | undefined;
  /** As for ordered: undefined runs with the stored setting; a value (null: none) must match it. */
  rateLimit: StoredRateLimit | null | undefined;
  keyConcurrency: number | null | undefined;
  /** As asked for; undefined runs with the stored value (the subscription stores its settings). */
  ordered: boolean | undefined;
  /** As asked for; undefined runs with the stored value. */
  blockKeyOnDead: boolean | undefined;
  maxAttempts: number;
  batchSize: number;
  concurrency: number;
  leaseMs: number;
  pollIntervalMs: number;
  retry: { minDelayMs: number; maxDelayMs: number };
}

/** The options forward() shares with subscribe: all but the handler's (mode, db, schema). */
export const FORWARD_KEYS = [
  'topics',
  'ordered',
  'blockKeyOnDead',
  'maxAttempts',
  'batchSize',
  'concurrency',
  'leaseMs',
  'pollIntervalMs',
  'retry',
  'rateLimit',
  'keyConcurrency',
] as const;

export function resolveSubscribeOptions(options: SubscribeOptions): ResolvedSubscribeOptions {
  const o = objectOrEmpty('subscribe', options);
  assertKnownKeys('subscribe', o, [...FORWARD_KEYS, 'mode', 'schema', 'db']);
  const mode = o.mode ?? 'lease';
  if (mode !== 'lease' && mode !== 'transactional') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'mode must be "lease" or "transactional"', {
      value: mode,
    });
  }
  // Omitted settings keep the stored ones, so only an explicit `ordered: false` makes blockKeyOnDead invalid here;
  // the rest is checked against the stored subscription when the consumer starts.
  const ordered = o.ordered === undefined ? undefined : boolean('ordered', o.ordered, false);
  const blockKeyOnDead =
    o.blockKeyOnDead === undefined ? undefined : boolean('blockKeyOnDead', o.blockKeyOnDead, false);
  if (blockKeyOnDead === true && ordered === false) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'blockKeyOnDead applies to ordered subscriptions: set ordered: true',
    );
  }
  const retry = objectOrEmpty('retry', o.retry);
  assertKnownKeys('retry', retry, ['minDelayMs', 'maxDelayMs']);
  const minDelayMs = integer('retry.minDelayMs', retry.minDelayMs, 1000, 0, DAY_MS);
  return {
    filter: topicFilter(o.topics),
    schema: payloadSchema(o.schema),
    mode,
    db: handlerDb(o.db, mode),
    ordered,
    rateLimit: resolveRateLimit(o.rateLimit),
    keyConcurrency: resolveKeyConcurrency(o.keyConcurrency),
    blockKeyOnDead,
    maxAttempts: integer('maxAttempts', o.maxAttempts, 10, 1, 1000),
    batchSize: integer('batchSize', o.batchSize, 1000, 1, 10_000),
    concurrency: integer('concurrency', o.concurrency, 10, 1, 1000),
    leaseMs: integer('leaseMs', o.leaseMs, 30_000, 100, DAY_MS),
    pollIntervalMs: integer('pollIntervalMs', o.pollIntervalMs, 1000, 5, 600_000),
    retry: {
      minDelayMs,
      maxDelayMs: integer(
        'retry.maxDelayMs',
        retry.maxDelayMs,
        Math.max(3_600_000, minDelayMs),
        minDelayMs,
        30 * DAY_MS,
      ),
    },
  };
}

function handlerDb(value: unknown, mode: SubscriptionMode): Queryable | undefined {
  if (value === undefined) return undefined;
  if (mode !== 'transactional') {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'db applies to transactional mode, where the handler gets ctx.tx: set mode: "transactional"',
    );
  }
  const adapter = adapterFor(value);
  if (adapter === undefined) {
    throw new OutboxError(
      'OUTBOX_INVALID_EXECUTOR',
      'db must be a Kysely, Drizzle, Knex, Prisma, TypeORM or postgres.js pool object, or a pg Pool',
      { value: typeof value },
    );
  }
  if (adapter.inTransaction(value)) {
    throw new OutboxError(
      'OUTBOX_INVALID_EXECUTOR',
      `db must be a pool that opens transactions (a ${adapter.library} transaction or lent connection cannot host one per handler)`,
      { value: adapter.library },
    );
  }
  return value as Queryable;
}

function payloadSchema(value: unknown): StandardSchemaV1 | undefined {
  if (value === undefined) return undefined;
  if (!isStandardSchema(value)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'schema must be a Standard Schema v1 validator (zod 3.24+, valibot 1, arktype 2, ...)',
      { value: typeof value },
    );
  }
  return value;
}

/** A Standard Schema v1 validator: `~standard` with version 1 and validate(). */
export function isStandardSchema(value: unknown): value is StandardSchemaV1 {
  // Validators may be functions (arktype's are), so look up the property on either kind of object.
  const holder = value !== null && (typeof value === 'object' || typeof value === 'function') ? value : null;
  const standard = (holder === null ? undefined : Reflect.get(holder, '~standard')) as
    { version?: unknown; validate?: unknown } | undefined;
  return standard?.version === 1 && typeof standard.validate === 'function';
}
