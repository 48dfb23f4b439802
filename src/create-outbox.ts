import type { Logger } from 'pino';
import { isId, listDeadLetters, readStatus, replay, type DeadLetterQuery } from './admin.js';
import { Consumer } from './consumer/consumer.js';
import { withPayloadSchema } from './consumer/payload-schema.js';
import {
  pgExecutor,
  toExecutor,
  withTransaction,
  type Queryable,
  type TransactionOf,
} from './db/executor.js';
import { OutboxError } from './errors.js';
import { OutboxEmitter, type EventName, type Listener as EventListener } from './events.js';
import { migrate } from './migrate.js';
import { runCleanup, runPurge, type CleanupResult } from './maintenance.js';
import { readJourney } from './journey.js';
import { withStatementTimeout } from './db/timed-connection.js';
import { messageExists } from './sql/journey.js';
import { assertKnownKeys } from './option-checks.js';
import { resolveOptions, type OutboxOptions } from './options.js';
import { FORWARD_KEYS, resolveSubscribeOptions } from './subscribe-options.js';
import { publish, publishMany } from './producer/publish.js';
import { declareSubscription } from './declare-subscription.js';
import { SideConnection } from './db/side-connection.js';
import { createRelay } from './relay/relay.js';
import { resetRelay, type ResetRelayResult } from './relay/reset.js';
import { createLifecycle } from './runtime/lifecycle.js';
import { TelemetryHub } from './telemetry/hub.js';
import { createTracing } from './telemetry/tracing.js';
import { adminData } from './admin-ui/bind.js';
import {
  createAdminHandler,
  type AdminHandlerOptions,
  type AdminRequestHandler,
} from './admin-ui/handler.js';
import { discardDeadLetters, type DiscardOptions } from './discard-dead-letters.js';
import { attachMetrics, type MetricsOptions, type OutboxMetrics } from './telemetry/metrics.js';
import { Listener } from './runtime/listener.js';
import { cancelDeliveries } from './sql/deliveries.js';
import { insertCancellation } from './sql/messages.js';
import { insertProcessedKey } from './sql/processed.js';
import { assertKeyPart } from './idempotency-key.js';
import { assertTarget, FORWARD_DEFAULTS, type ForwardOptions, type ForwardTarget } from './forward/target.js';
import { resolveKeyConcurrency, resolveRateLimit } from './flow-options.js';
import { assertSubscriptionName, topicFilter } from './topics.js';
import {
  createTypedTopic,
  type InferSchemaInput,
  type InferSchemaOutput,
  type TypedTopic,
} from './typed-topic.js';
import type {
  DeadLetter,
  DeclareOptions,
  Handler,
  MessageJourney,
  PurgeOptions,
  PurgeResult,
  ReplayOptions,
  ReplayResult,
  LeaseContext,
  OnceResult,
  OutboxStatus,
  PublishInput,
  PublishOptions,
  PublishResult,
  StandardSchemaV1,
  SubscribeOptions,
  TransactionalContext,
} from './types.js';

export interface Outbox {
  /** Creates or upgrades the schema. Idempotent, safe from many processes at once. */
  migrate(): Promise<void>;
  publish(db: Queryable, topic: string, payload: unknown, options?: PublishOptions): Promise<PublishResult>;
  publishMany(db: Queryable, messages: readonly PublishInput[]): Promise<PublishResult[]>;
  /**
   * In the caller's transaction: once it commits, no delivery of the message starts (the relay skips it, a claim
   * drops it). Returns how many pending deliveries were dropped now: 0 when the relay had not fanned it out yet.
   */
  cancel(db: Queryable, messageId: string | number | bigint): Promise<{ cancelled: number }>;
  /**
   * Creates the subscription (consumer group) or updates it; the relay fans out to it from then on. Replaces the
   * topics and changes only the settings given: an omitted `ordered` or `blockKeyOnDead` keeps its stored value
   * (false for a new subscription).
   */
  declareSubscription(name: string, options: DeclareOptions): Promise<void>;
  /** Transactional mode with `db`: ctx.tx is the transaction object of db's library. */
  subscribe<Payload = unknown, D extends Queryable = Queryable>(
    name: string,
    options: SubscribeOptions<Payload> & { mode: 'transactional'; db: D },
    handler: Handler<TransactionalContext<TransactionOf<D>>, Payload>,
  ): void;
  subscribe<Payload = unknown>(
    name: string,
    options: SubscribeOptions<Payload> & { mode: 'transactional' },
    handler: Handler<TransactionalContext, Payload>,
  ): void;
  subscribe<Payload = unknown>(
    name: string,
    options: SubscribeOptions<Payload>,
    handler: Handler<LeaseContext, Payload>,
  ): void;
  /**
   * Declares a topic once with a Standard Schema validator (zod, valibot, arktype, ...): its publish and
   * publishMany take the schema's input type and validate before anything is written (OUTBOX_INVALID_PAYLOAD
   * with the issues); its subscribe hands handlers the schema's output and dead-letters a failing payload at once.
   * The name must be a topic, not a pattern (OUTBOX_INVALID_TOPIC).
   */
  topic<S extends StandardSchemaV1>(
    name: string,
    schema: S,
  ): TypedTopic<InferSchemaInput<S>, InferSchemaOutput<S>>;
  /**
   * A subscription whose deliveries go to a broker instead of a handler: each is published to `to` and done only
   * once the broker confirmed it (RabbitMQ publisher confirm, JetStream PubAck); a failed publish is retried with
   * backoff and ends in the dead letters like a handler's failure. Lease mode; ordered subscriptions keep per-key
   * order on the broker side (the next message of a key is sent after the previous one's confirm). The target's
   * connection closes when the Outbox stops.
   */
  forward(name: string, options: ForwardOptions): void;
  /**
   * Starts the relay and the registered consumers in this process. Idempotent; concurrent calls share one start.
   * When it fails (schema not migrated, a subscription conflict, the database down) nothing runs and it can be
   * called again.
   */
  start(): Promise<void>;
  /**
   * Stops claiming, finishes or releases in-flight work, stops the relay. Idempotent. Once it resolved no consumer
   * of this Outbox runs, also none whose start (a subscribe() after start()) was still under way.
   */
  stop(): Promise<void>;
  once<D extends Queryable, T>(
    db: D,
    scope: string,
    key: string,
    fn: (tx: TransactionOf<D>) => Promise<T>,
  ): Promise<OnceResult<T>>;
  deadLetters(name: string, query?: DeadLetterQuery): Promise<DeadLetter[]>;
  /**
   * Re-queues dead letters (`{ ids }`, or all of the subscription's when called without options), or, with
   * `{ since }`, re-delivers to this subscription every retained message of its topics published since then. A
   * `since` older than what retention kept fails with OUTBOX_REPLAY_BEYOND_RETENTION before anything is queued.
   */
  replay(name: string, options?: ReplayOptions): Promise<ReplayResult>;
  status(): Promise<OutboxStatus>;
  /** A message and its journey across subscriptions (deliveries, attempts, failures); null when it is not retained. */
  journey(messageId: string | number | bigint): Promise<MessageJourney | null>;
  /**
   * Runs retention now, to the end: finished deliveries and their messages older than retentionMs, dead letters
   * older than deadLetterRetentionMs, idempotency keys older than processedRetentionMs. `dryRun` only counts.
   */
  purge(options?: PurgeOptions): Promise<PurgeResult>;
  /**
   * Sets the relay's position to now and fans out every committed message that has no delivery yet. Needed after
   * the database moved to another cluster (the relay refuses with OUTBOX_RELAY_CLUSTER_CHANGED); safe at any time.
   * Runs with the pool's role, which needs the schema owner's privileges.
   */
  resetRelay(): Promise<ResetRelayResult>;
  /** The retention of idempotency keys and dead letters only; purge() does all of it. */
  cleanup(): Promise<CleanupResult>;
  /**
   * Prometheus metrics of this Outbox on a prom-client registry (prom-client is an optional peer dependency):
   * counters and histograms of what this process publishes, relays and handles, and gauges of the database's
   * figures read on scrape. See README, "Metrics".
   */
  metrics(options?: MetricsOptions): Promise<OutboxMetrics>;
  /**
   * Gives up on dead letters (`{ ids }` or `{ all: true }`): finished as 'cancelled' in the audit trail; a key that
   * one of them blocked goes on.
   */
  discardDeadLetters(name: string, options: DiscardOptions): Promise<{ discarded: number }>;
  /**
   * The admin page as a node:http request handler (Express and Fastify pass their raw request and response):
   * subscriptions, dead letters with Replay and Discard, a message's journey, search by key. See README.
   */
  adminHandler(options?: AdminHandlerOptions): AdminRequestHandler;
  on<E extends EventName>(event: E, listener: EventListener<E>): void;
  off<E extends EventName>(event: E, listener: EventListener<E>): void;
  /** The pino logger in use. */
  readonly logger: Logger;
}

/**
 * Longest wait for a lease extension's answer before its connection is given up as dead: a half-open connection
 * must not hold every heartbeat of the Outbox until the kernel notices.
 */
const LEASE_QUERY_TIMEOUT_MS = 10_000;

export function createOutbox(options: OutboxOptions): Outbox {
  const config = resolveOptions(options);
  const { pool, schema } = config;
  const log = config.logger.child({ component: 'outbox', schema: schema.name });
  const events = new OutboxEmitter();
  const telemetry = new TelemetryHub();
  const tracing = createTracing(config.tracing);
  if (tracing !== null) telemetry.add(tracing);
  const producer = { schema, maxPayloadBytes: config.maxPayloadBytes, telemetry };
  const relay = createRelay(config, events, telemetry);
  const listener = new Listener(pool, schema, config.logger, events);
  const consumers = new Map<string, Consumer>();
  // Lease extensions of all this Outbox's consumers, on a connection outside the pool (see SideConnection).
  const leaseConnection = new SideConnection(
    pool,
    config.logger.child({ component: 'lease-connection', schema: schema.name }),
    LEASE_QUERY_TIMEOUT_MS,
  );
  const lifecycle = createLifecycle({ config, consumers, relay, listener, leaseConnection, events, log });

  /** forward()'s brokers, closed when the Outbox stops. */
  const targets = new Set<ForwardTarget>();
  const outbox: Outbox = {
    logger: config.logger,
    async migrate() {
      await migrate(pool, schema, config.logger);
    },
    publish: (db, topic, payload, opts) => publish(producer, db, topic, payload, opts),
    publishMany: (db, messages) => publishMany(producer, db, messages),
    async cancel(db, messageId) {
      const id = String(messageId);
      if (!isId(id)) {
        throw new OutboxError('OUTBOX_INVALID_OPTION', 'cancel needs a message id (a positive integer)', {
          value: id,
        });
      }
      const exec = toExecutor(db);
      if (!(await messageExists(exec, schema, id))) {
        throw new OutboxError('OUTBOX_UNKNOWN_MESSAGE', `No message ${id} in schema "${schema.name}"`, {
          value: id,
        });
      }
      await insertCancellation(exec, schema, id);
      return { cancelled: await cancelDeliveries(exec, schema, id) };
    },
    async declareSubscription(name, opts) {
      assertSubscriptionName(name);
      assertKnownKeys('declareSubscription', opts, [
        'topics',
        'ordered',
        'blockKeyOnDead',
        'rateLimit',
        'keyConcurrency',
      ]);
      for (const option of ['ordered', 'blockKeyOnDead'] as const) {
        if (opts[option] !== undefined && typeof opts[option] !== 'boolean') {
          throw new OutboxError('OUTBOX_INVALID_OPTION', `${option} must be true or false`, {
            value: opts[option],
          });
        }
      }
      const request = {
        filter: topicFilter(opts.topics),
        ordered: opts.ordered,
        blockKeyOnDead: opts.blockKeyOnDead,
        rateLimit: resolveRateLimit(opts.rateLimit),
        keyConcurrency: resolveKeyConcurrency(opts.keyConcurrency),
      };
      await declareSubscription(pool, schema, name, request, 'declare');
    },
    subscribe(
      name: string,
      opts: SubscribeOptions,
      handler: Handler<LeaseContext> | Handler<TransactionalContext<never>>,
    ) {
      assertSubscriptionName(name);
      const resolved = resolveSubscribeOptions(opts);
      if (typeof handler !== 'function') {
        throw new OutboxError('OUTBOX_INVALID_OPTION', 'subscribe needs a handler function', {
          value: typeof handler,
        });
      }
      if (consumers.has(name)) {
        throw new OutboxError(
          'OUTBOX_DUPLICATE_SUBSCRIBER',
          `"${name}" is already subscribed in this Outbox`,
          {
            value: name,
          },
        );
      }
      const consumer = new Consumer({
        name,
        schema,
        pool,
        leaseConnection,
        options: resolved,
        handler: withPayloadSchema(handler as Handler<unknown>, resolved.schema),
        logger: config.logger,
        events,
        telemetry,
      });
      consumers.set(name, consumer);
      lifecycle.subscribed(name, consumer);
    },
    topic: (name, topicSchema) => createTypedTopic(outbox, name, topicSchema),
    forward(name, opts) {
      assertKnownKeys('forward', opts, [...FORWARD_KEYS, 'to']);
      const { to, ...subscription } = opts;
      assertTarget(to);
      const options = { ...FORWARD_DEFAULTS, ...subscription, mode: 'lease' as const };
      outbox.subscribe(name, options, (message) => to.send(telemetry.forwarding(message, to.name)));
      targets.add(to);
    },
    start: () => lifecycle.start(),
    async stop() {
      await lifecycle.stop();
      await Promise.all([...targets].map((target) => target.close()));
    },
    once(db, scope, key, fn) {
      assertKeyPart('scope', scope);
      assertKeyPart('key', key);
      return withTransaction(db, async (exec, tx) => {
        if (!(await insertProcessedKey(exec, schema, scope, key))) return { duplicate: true };
        return { duplicate: false, result: await fn(tx) };
      });
    },
    deadLetters: (name, query) => listDeadLetters(pgExecutor(pool), schema, name, query),
    replay: (name, opts) => replay(pool, schema, name, opts),
    status: () => readStatus(pool, schema),
    journey(messageId) {
      const id = String(messageId);
      if (!isId(id)) {
        throw new OutboxError('OUTBOX_INVALID_OPTION', 'journey needs a message id (a positive integer)', {
          value: id,
        });
      }
      return readJourney(pgExecutor(pool), schema, id);
    },
    purge(opts = {}) {
      assertKnownKeys('purge', opts, ['dryRun']);
      const dryRun = opts.dryRun ?? false;
      if (typeof dryRun !== 'boolean') {
        throw new OutboxError('OUTBOX_INVALID_OPTION', 'dryRun must be true or false', { value: dryRun });
      }
      return withStatementTimeout(pool, config.relay.sessionTimeoutMs, (exec) =>
        runPurge(exec, schema, config, dryRun),
      );
    },
    resetRelay: () => resetRelay(pool, schema, config.logger),
    cleanup: () =>
      withStatementTimeout(pool, config.relay.sessionTimeoutMs, (exec) => runCleanup(exec, schema, config)),
    metrics: (opts) =>
      attachMetrics(telemetry, { schema: schema.name, status: () => readStatus(pool, schema) }, opts),
    discardDeadLetters: (name, opts) => discardDeadLetters(pool, schema, name, opts),
    adminHandler: (opts = {}) => createAdminHandler(adminData(pool, schema), opts, log),
    on: (event, l) => events.on(event, l),
    off: (event, l) => events.off(event, l),
  };
  return outbox;
}
