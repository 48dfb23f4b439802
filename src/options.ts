import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type pg from 'pg';
import { pino, type Logger } from 'pino';
import { OutboxError } from './errors.js';
import { adapterFor } from './db/adapters/index.js';
import { resolveKeyConcurrency, resolveRateLimit, type StoredRateLimit } from './flow-options.js';
import type { Queryable } from './db/executor.js';
import { schemaName, type SchemaName } from './db/identifiers.js';
import type { ConsumerIdentity } from './sql/consumers.js';
import type { TracingOptions } from './telemetry/tracing.js';
import { topicFilter, type TopicFilter } from './topics.js';
import type { StandardSchemaV1, SubscribeOptions, SubscriptionMode } from './types.js';

export interface RelayOptions {
  /** Run the relay in this process (one process per schema is active; the others stand by). @defaultValue true */
  enabled?: boolean;
  /** Messages fanned out per transaction. @defaultValue 1000 */
  batchSize?: number;
  /**
   * Pause between polls of the outbox when it is drained. While messages keep arriving (a batch found some in the
   * last second) the relay polls every 5 ms instead, or every pollIntervalMs when that is shorter.
   * @defaultValue 20
   */
  pollIntervalMs?: number;
  /** How often a standby relay tries to take over. @defaultValue 1000 */
  standbyPollMs?: number;
  /**
   * How long the relay's connection may stay silent before it is given up: its queries time out after this, and
   * Postgres ends the session (releasing the relay lock) once it has been idle this long past its poll interval,
   * so a standby takes over from a relay whose network path died or whose process froze. @defaultValue 30_000
   */
  sessionTimeoutMs?: number;
  /**
   * How often the cleanup (expired idempotency keys and dead letters) runs while this process's relay is active.
   * It runs on pool connections beside the relay, a first pass as soon as the relay leads; a pass that leaves work
   * behind is followed by the next at once, and each statement is bounded by sessionTimeoutMs. @defaultValue 60_000
   */
  maintenanceIntervalMs?: number;
  /**
   * After each retention pass, VACUUM every outbox table whose dead rows passed autovacuum's default trigger (at
   * least 10,000 and 20% of its live rows), whether autovacuum is on or not, without its cost delay, skipping a table
   * an autovacuum already works on. Needs the schema owner's role (others get a WARNING from Postgres and nothing is
   * done). @defaultValue true
   */
  vacuum?: boolean;
}

export interface OutboxOptions {
  /** The pool pg-outbox runs its own statements on (claims, acks, relay batches). */
  pool: pg.Pool;
  /** Schema holding the outbox tables. @defaultValue 'outbox' */
  schema?: string;
  /** A pino logger; pg-outbox logs through child loggers and never logs payloads. @defaultValue silent above 'warn' */
  logger?: Logger;
  /** Largest payload, in bytes of JSON, that publish accepts. @defaultValue 1_048_576 (1 MiB) */
  maxPayloadBytes?: number;
  relay?: RelayOptions;
  /** Run the consumers registered with subscribe() on start(). @defaultValue true */
  consumers?: boolean;
  /** How long stop() waits for running handlers before releasing their work. @defaultValue 10_000 */
  shutdownTimeoutMs?: number;
  /**
   * How long idempotency keys (`processed`) are kept; 0 keeps them forever. A redelivery that comes later than
   * this runs its effect again, so keep it well above your longest retry schedule. @defaultValue 2_592_000_000 (30 days)
   */
  processedRetentionMs?: number;
  /**
   * How long dead letters are kept after they died; older ones are deleted by the cleanup (and can no longer be
   * replayed). 0 keeps them until they are replayed. @defaultValue 2_592_000_000 (30 days)
   */
  deadLetterRetentionMs?: number;
  /**
   * How long finished work is kept: a message older than this whose deliveries have all finished (done or
   * cancelled) is deleted with those deliveries and its failure history. A message that any subscription still has
   * pending, delayed, in flight or dead is kept, however old. 0 keeps everything. @defaultValue 604_800_000 (7 days)
   */
  retentionMs?: number;
  /**
   * This process's name in the audit trail: each delivery records the consumer of its latest attempt as
   * `host:pid:instance`. At most 64 characters, no ':'. @defaultValue 8 random hex characters per Outbox
   */
  instance?: string;
  /**
   * OpenTelemetry tracing: a `send` span per publish whose context the messages carry in their headers, and a
   * `process` span per handler call (see README, Tracing). `true` / `false` set `enabled`.
   * @defaultValue { enabled: 'auto', link: false }: on when @opentelemetry/api is installed
   */
  tracing?: boolean | TracingOptions;
}

export interface ResolvedTracing extends TracingOptions {
  enabled: boolean | 'auto';
  link: boolean;
}

export interface ResolvedOptions {
  pool: pg.Pool;
  schema: SchemaName;
  logger: Logger;
  maxPayloadBytes: number;
  relay: Required<RelayOptions>;
  consumers: boolean;
  shutdownTimeoutMs: number;
  processedRetentionMs: number;
  deadLetterRetentionMs: number;
  retentionMs: number;
  /** Who runs this Outbox's consumers, recorded with every attempt (consumers table). */
  identity: ConsumerIdentity;
  tracing: ResolvedTracing;
}

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

export function assertKnownKeys(where: string, value: unknown, known: readonly string[]): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${where} options must be an object`, { value });
  }
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      throw new OutboxError(
        'OUTBOX_UNKNOWN_OPTION',
        `Unknown ${where} option "${key}"; known: ${known.join(', ')}`,
        {
          value: key,
        },
      );
    }
  }
}

function integer(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be an integer from ${min} to ${max}`, {
      value,
    });
  }
  return value;
}

function boolean(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be true or false`, { value });
  }
  return value;
}

function objectOrEmpty(name: string, value: unknown): Record<string, unknown> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be an object`, { value });
  }
  return value as Record<string, unknown>;
}

const DAY_MS = 86_400_000;

function instanceName(value: unknown): string {
  if (value === undefined) return randomBytes(4).toString('hex');
  if (typeof value !== 'string' || !/^[^:\s]{1,64}$/.test(value)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'instance must be 1 to 64 characters without ":" or white space',
      { value },
    );
  }
  return value;
}

export function resolveOptions(options: OutboxOptions): ResolvedOptions {
  if (options === undefined || options === null) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'createOutbox needs options: { pool, schema?, logger?, ... }',
    );
  }
  const o = objectOrEmpty('createOutbox', options);
  assertKnownKeys('createOutbox', o, [
    'pool',
    'schema',
    'logger',
    'maxPayloadBytes',
    'relay',
    'consumers',
    'shutdownTimeoutMs',
    'processedRetentionMs',
    'deadLetterRetentionMs',
    'retentionMs',
    'instance',
    'tracing',
  ]);
  if (typeof options.pool?.connect !== 'function' || !('totalCount' in options.pool)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'createOutbox needs `pool`: a pg.Pool', {
      value: typeof options.pool,
    });
  }
  const relay = objectOrEmpty('relay', o.relay);
  assertKnownKeys('relay', relay, [
    'enabled',
    'batchSize',
    'pollIntervalMs',
    'standbyPollMs',
    'sessionTimeoutMs',
    'maintenanceIntervalMs',
    'vacuum',
  ]);
  return {
    pool: options.pool,
    schema: schemaName(options.schema === undefined ? 'outbox' : options.schema),
    logger: options.logger ?? pino({ level: 'warn' }),
    maxPayloadBytes: integer('maxPayloadBytes', o.maxPayloadBytes, 1_048_576, 1, 256 * 1_048_576),
    relay: {
      enabled: boolean('relay.enabled', relay.enabled, true),
      batchSize: integer('relay.batchSize', relay.batchSize, 1000, 1, 100_000),
      pollIntervalMs: integer('relay.pollIntervalMs', relay.pollIntervalMs, 20, 1, 60_000),
      standbyPollMs: integer('relay.standbyPollMs', relay.standbyPollMs, 1000, 10, 600_000),
      sessionTimeoutMs: integer('relay.sessionTimeoutMs', relay.sessionTimeoutMs, 30_000, 1_000, 3_600_000),
      maintenanceIntervalMs: integer(
        'relay.maintenanceIntervalMs',
        relay.maintenanceIntervalMs,
        60_000,
        100,
        DAY_MS,
      ),
      vacuum: boolean('relay.vacuum', relay.vacuum, true),
    },
    consumers: boolean('consumers', o.consumers, true),
    shutdownTimeoutMs: integer('shutdownTimeoutMs', o.shutdownTimeoutMs, 10_000, 0, DAY_MS),
    processedRetentionMs: integer(
      'processedRetentionMs',
      o.processedRetentionMs,
      30 * DAY_MS,
      0,
      3650 * DAY_MS,
    ),
    deadLetterRetentionMs: integer(
      'deadLetterRetentionMs',
      o.deadLetterRetentionMs,
      30 * DAY_MS,
      0,
      3650 * DAY_MS,
    ),
    retentionMs: integer('retentionMs', o.retentionMs, 7 * DAY_MS, 0, 3650 * DAY_MS),
    identity: { host: hostname(), pid: process.pid, instance: instanceName(o.instance) },
    tracing: resolveTracing(o.tracing),
  };
}

function resolveTracing(value: unknown): ResolvedTracing {
  if (typeof value === 'boolean') return { enabled: value, link: false };
  const t = objectOrEmpty('tracing', value);
  assertKnownKeys('tracing', t, ['enabled', 'link', 'tracerProvider']);
  const enabled = t.enabled ?? 'auto';
  if (enabled !== 'auto' && typeof enabled !== 'boolean') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', "tracing.enabled must be true, false or 'auto'", {
      value: enabled,
    });
  }
  const provider = t.tracerProvider as { getTracer?: unknown } | undefined;
  if (provider !== undefined && typeof provider.getTracer !== 'function') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'tracing.tracerProvider must have getTracer()', {
      value: typeof provider,
    });
  }
  return {
    enabled,
    link: boolean('tracing.link', t.link, false),
    tracerProvider: t.tracerProvider as TracingOptions['tracerProvider'],
  };
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
    batchSize: integer('batchSize', o.batchSize, 100, 1, 10_000),
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
