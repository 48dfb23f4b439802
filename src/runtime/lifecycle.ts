import type { Logger } from 'pino';
import type { Consumer } from '../consumer/consumer.js';
import { pgExecutor } from '../db/executor.js';
import type { SideConnection } from '../db/side-connection.js';
import { declareSubscription, type DeclaredSubscription } from '../declare-subscription.js';
import { OutboxError } from '../errors.js';
import type { OutboxEmitter } from '../events.js';
import type { ResolvedOptions } from '../options.js';
import type { Relay } from '../relay/relay.js';
import { registerConsumer } from '../sql/consumers.js';
import { selectRelayStateExists } from '../sql/schema.js';
import type { Listener } from './listener.js';

/** A consumer's subscription as declared, and this Outbox's number in the consumers table. */
type ConsumerStart = DeclaredSubscription & { consumerId: number };

export interface LifecycleParts {
  config: ResolvedOptions;
  consumers: ReadonlyMap<string, Consumer>;
  relay: Relay;
  listener: Listener;
  leaseConnection: SideConnection;
  events: OutboxEmitter;
  log: Logger;
}

export interface Lifecycle {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** subscribe() registered a consumer: it starts now when the Outbox is starting or started. */
  subscribed(name: string, consumer: Consumer): void;
}

/**
 * start() and stop() of one Outbox.
 * - A start that fails (schema not migrated, a declaration refused, the database down) leaves nothing running,
 *   and start() can be called again.
 * - Concurrent start() calls share one start; a start() during stop() waits for it, then starts afresh.
 * - Each stop() ends a generation. A start or a consumer's declaration from an earlier generation that finishes
 *   after stop() starts nothing, so no consumer runs after stop() resolved. stop() does not wait for those
 *   declarations: one may wait on another transaction's row lock for as long as that transaction lasts.
 */
export function createLifecycle(parts: LifecycleParts): Lifecycle {
  const { config, consumers, relay, listener, events, log } = parts;
  const { pool, schema } = config;
  let generation = 0;
  let starting: Promise<void> | null = null;
  let stopping: Promise<void> | null = null;
  let poolListening = false;
  // pg-pool emits an idle client's connection error on the pool; without a listener a Postgres restart would
  // crash the process. The pool drops that client by itself, so logging is all that is needed. Attached while
  // started, so many Outbox instances over one pool do not pile up listeners.
  const onPoolError = (error: Error) => log.warn({ err: error }, 'idle pool connection lost');

  function listenToPool(on: boolean): void {
    if (on === poolListening) return;
    poolListening = on;
    if (on) pool.on('error', onPoolError);
    else pool.off('error', onPoolError);
  }

  async function assertMigrated(): Promise<void> {
    if (!(await selectRelayStateExists(pgExecutor(pool), schema))) {
      throw new OutboxError(
        'OUTBOX_NOT_MIGRATED',
        `Schema "${schema.name}" has no outbox tables: call migrate() first`,
        { value: schema.name },
      );
    }
  }

  /**
   * Creates the subscription of a registered consumer or updates its topics; returns its id and the stored
   * settings, or fails with OUTBOX_SUBSCRIPTION_CONFLICT when the consumer's options contradict them.
   */
  async function declareConsumer(name: string, consumer: Consumer): Promise<ConsumerStart> {
    const [subscription, consumerId] = await Promise.all([
      declareSubscription(pool, schema, name, consumer.options, 'consumer'),
      identify(),
    ]);
    return { ...subscription, consumerId };
  }

  /** This Outbox's row in the consumers table, registered once (again after a failure). */
  let registration: Promise<number> | null = null;
  function identify(): Promise<number> {
    registration ??= registerConsumer(pgExecutor(pool), schema, config.identity).catch((error: unknown) => {
      registration = null;
      throw error;
    });
    return registration;
  }

  function runConsumer(consumer: Consumer, subscription: ConsumerStart): void {
    listener.start();
    listener.add(subscription.id, consumer.wakeup);
    consumer.start(subscription);
  }

  /**
   * Transactional handlers hold a pool connection each while they run. When they can hold all of them, a handler
   * that queries the pool instead of ctx.tx waits forever, and claims and acks queue behind the handlers. Not an
   * error: pg's default max (10) equals the default concurrency, and handlers that use only ctx.tx are fine.
   * Besides its transactions, each consumer needs a connection for its claims (two while a backlog lasts).
   */
  function warnPoolSizing(): void {
    const running = config.consumers ? [...consumers.values()] : [];
    const transactionalConcurrency = running.reduce((n, c) => n + transactionalSlots(c), 0);
    const poolMax = pool.options.max ?? 10;
    if (transactionalConcurrency === 0 || transactionalConcurrency < poolMax) return;
    log.warn(
      {
        poolMax,
        transactionalConcurrency,
        consumers: running.length,
        suggestedPoolMax: transactionalConcurrency + 2 * running.length,
      },
      'transactional consumers can hold every pool connection: a handler that uses the pool instead of ctx.tx ' +
        'would wait forever; raise the pool max to suggestedPoolMax or lower the concurrency',
    );
  }

  async function run(current: number): Promise<void> {
    const registered = config.consumers ? [...consumers] : [];
    await assertMigrated();
    warnPoolSizing();
    // Every subscription registered here exists before this process's relay starts, so a message still in the
    // relay's backlog reaches all of them, not only those whose declaration happened to commit first. All
    // declarations end before start() fails, so a retried start() does not run beside one still under way.
    const results = await Promise.allSettled(registered.map(([name, c]) => declareConsumer(name, c)));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    if (current !== generation) return;
    if (config.relay.enabled) relay.start();
    results.forEach((result, i) => {
      const consumer = registered[i]?.[1];
      if (result.status === 'fulfilled' && consumer !== undefined) runConsumer(consumer, result.value);
    });
  }

  async function startLate(name: string, consumer: Consumer, current: number, started: Promise<void>) {
    const skipped = () =>
      log.debug({ subscription: name }, 'consumer not started: the outbox stopped meanwhile');
    // A failed start is reported by start(); the next start() declares this consumer with the others.
    const startedOk = await started.then(
      () => true,
      () => false,
    );
    if (!startedOk) return;
    if (current !== generation) return skipped();
    try {
      const subscription = await declareConsumer(name, consumer);
      if (current !== generation) return skipped();
      if (transactionalSlots(consumer) > 0) warnPoolSizing();
      runConsumer(consumer, subscription);
    } catch (error) {
      if (current !== generation) return skipped();
      log.error({ err: error, subscription: name }, 'starting consumer failed');
      events.emit('error', error, { component: `consumer:${name}` });
    }
  }

  function start(): Promise<void> {
    if (stopping !== null) return stopping.catch(() => undefined).then(start);
    if (starting === null) {
      const current = generation;
      listenToPool(true);
      starting = run(current).catch((error: unknown) => {
        // Nothing runs yet: the next start() begins afresh.
        if (current === generation) {
          starting = null;
          listenToPool(false);
        }
        throw error;
      });
    }
    return starting;
  }

  function stop(): Promise<void> {
    if (stopping !== null) return stopping;
    if (starting === null) return Promise.resolve();
    generation += 1;
    starting = null;
    stopping = (async () => {
      try {
        await Promise.all([...consumers.values()].map((c) => c.stop(config.shutdownTimeoutMs)));
        await Promise.all([listener.stop(), relay.stop(), parts.leaseConnection.close()]);
      } finally {
        listenToPool(false);
        stopping = null;
      }
    })();
    return stopping;
  }

  return {
    start,
    stop,
    subscribed(name, consumer) {
      if (starting === null || !config.consumers) return;
      void startLate(name, consumer, generation, starting);
    },
  };
}

/** Pool connections a consumer's handler transactions may hold at once (0 in lease mode). */
function transactionalSlots(consumer: Consumer): number {
  const { mode, concurrency } = consumer.options;
  return mode === 'transactional' ? concurrency : 0;
}
