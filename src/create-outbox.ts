import type { Logger } from 'pino';
import { isId, listDeadLetters, readStatus, replayDeadLetters, type DeadLetterQuery } from './admin.js';
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
import { runCleanup, type CleanupResult } from './maintenance.js';
import { assertKnownKeys, resolveOptions, resolveSubscribeOptions, type OutboxOptions } from './options.js';
import { publish, publishMany } from './producer/publish.js';
import { createRelay } from './relay/relay.js';
import { Listener } from './runtime/listener.js';
import { cancelDeliveries } from './sql/deliveries.js';
import { insertCancellation } from './sql/messages.js';
import { insertProcessedKey } from './sql/processed.js';
import { assertKeyPart } from './idempotency-key.js';
import { selectRelayStateExists } from './sql/schema.js';
import { upsertSubscription } from './sql/subscriptions.js';
import { assertSubscriptionName, topicFilter } from './topics.js';
import type {
  DeadLetter,
  Handler,
  LeaseContext,
  OnceResult,
  OutboxStatus,
  PublishInput,
  PublishOptions,
  PublishResult,
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
  /** Creates the subscription (consumer group) or updates its topics; the relay fans out to it from then on. */
  declareSubscription(name: string, options: { topics: string[]; ordered?: boolean }): Promise<void>;
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
  /** Starts the relay and the registered consumers in this process. Idempotent. */
  start(): Promise<void>;
  /** Stops claiming, finishes or releases in-flight work, stops the relay. Idempotent. */
  stop(): Promise<void>;
  once<D extends Queryable, T>(
    db: D,
    scope: string,
    key: string,
    fn: (tx: TransactionOf<D>) => Promise<T>,
  ): Promise<OnceResult<T>>;
  deadLetters(name: string, query?: DeadLetterQuery): Promise<DeadLetter[]>;
  replay(
    name: string,
    options?: { ids?: readonly (string | number | bigint)[] },
  ): Promise<{ replayed: number }>;
  status(): Promise<OutboxStatus>;
  /** One bounded cleanup pass now (the active relay also runs it every relay.maintenanceIntervalMs). */
  cleanup(): Promise<CleanupResult>;
  on<E extends EventName>(event: E, listener: EventListener<E>): void;
  off<E extends EventName>(event: E, listener: EventListener<E>): void;
  /** The pino logger in use. */
  readonly logger: Logger;
}

export function createOutbox(options: OutboxOptions): Outbox {
  const config = resolveOptions(options);
  const { pool, schema } = config;
  const log = config.logger.child({ component: 'outbox', schema: schema.name });
  const events = new OutboxEmitter();
  const producer = { schema, maxPayloadBytes: config.maxPayloadBytes };
  const relay = createRelay(config, events);
  const listener = new Listener(pool, schema, config.logger, events);
  const consumers = new Map<string, Consumer>();
  let started = false;
  // pg-pool emits an idle client's connection error on the pool; without a listener a Postgres restart would
  // crash the process. The pool drops that client by itself, so logging is all that is needed. Attached while
  // started, so many Outbox instances over one pool do not pile up listeners.
  const onPoolError = (error: Error) => log.warn({ err: error }, 'idle pool connection lost');

  /** Creates or updates the subscription of a registered consumer; returns its id. */
  function declareConsumer(consumer: Consumer, name: string): Promise<number> {
    return upsertSubscription(pgExecutor(pool), schema, name, consumer.filter, consumer.ordered);
  }

  function runConsumer(consumer: Consumer, id: number): void {
    listener.add(id, consumer.wakeup);
    consumer.start(id);
  }

  async function startConsumer(consumer: Consumer, name: string): Promise<void> {
    runConsumer(consumer, await declareConsumer(consumer, name));
  }

  async function assertMigrated(): Promise<void> {
    if (!(await selectRelayStateExists(pgExecutor(pool), schema))) {
      throw new OutboxError(
        'OUTBOX_NOT_MIGRATED',
        `Schema "${schema.name}" has no outbox tables: call migrate() first`,
        {
          value: schema.name,
        },
      );
    }
  }

  return {
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
      await insertCancellation(exec, schema, id);
      return { cancelled: await cancelDeliveries(exec, schema, id) };
    },
    async declareSubscription(name, opts) {
      assertSubscriptionName(name);
      assertKnownKeys('declareSubscription', opts, ['topics', 'ordered']);
      if (opts.ordered !== undefined && typeof opts.ordered !== 'boolean') {
        throw new OutboxError('OUTBOX_INVALID_OPTION', 'ordered must be true or false', {
          value: opts.ordered,
        });
      }
      await upsertSubscription(
        pgExecutor(pool),
        schema,
        name,
        topicFilter(opts.topics),
        opts.ordered ?? false,
      );
    },
    subscribe(
      name: string,
      opts: SubscribeOptions,
      handler: Handler<LeaseContext> | Handler<TransactionalContext>,
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
        options: resolved,
        handler: withPayloadSchema(handler as Handler<unknown>, resolved.schema),
        logger: config.logger,
        events,
      });
      consumers.set(name, consumer);
      if (started && config.consumers) {
        listener.start();
        startConsumer(consumer, name).catch((error: unknown) => {
          log.error({ err: error, subscription: name }, 'starting consumer failed');
          events.emit('error', error, { component: `consumer:${name}` });
        });
      }
    },
    async start() {
      if (started) return;
      await assertMigrated();
      started = true;
      pool.on('error', onPoolError);
      // Every subscription registered here exists before this process's relay starts, so a message still in the
      // relay's backlog reaches all of them, not only those whose declaration happened to commit first.
      const registered = config.consumers ? [...consumers] : [];
      const declared = await Promise.all(
        registered.map(async ([name, consumer]) => ({ consumer, id: await declareConsumer(consumer, name) })),
      );
      if (config.relay.enabled) relay.start();
      if (declared.length > 0) listener.start();
      for (const { consumer, id } of declared) runConsumer(consumer, id);
    },
    async stop() {
      if (!started) return;
      started = false;
      await Promise.all([...consumers.values()].map((c) => c.stop(config.shutdownTimeoutMs)));
      await Promise.all([listener.stop(), relay.stop()]);
      pool.off('error', onPoolError);
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
    replay: (name, opts) => replayDeadLetters(pgExecutor(pool), schema, name, opts),
    status: () => readStatus(pgExecutor(pool), schema),
    cleanup: () => runCleanup(pgExecutor(pool), schema, config.processedRetentionMs),
    on: (event, l) => events.on(event, l),
    off: (event, l) => events.off(event, l),
  };
}
