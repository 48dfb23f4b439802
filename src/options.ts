import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type pg from 'pg';
import { pino, type Logger } from 'pino';
import { OutboxError } from './errors.js';
import { assertKnownKeys, boolean, DAY_MS, integer, objectOrEmpty } from './option-checks.js';
import { schemaName, type SchemaName } from './db/identifiers.js';
import type { ConsumerIdentity } from './sql/consumers.js';
import type { TracingOptions } from './telemetry/tracing.js';

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
