import {
  createOutbox,
  type Outbox,
  type OutboxMessage,
  type OutboxOptions,
  type SubscriptionMode,
} from '../../src/index.js';
import { count, createPool, dropSchemas, waitFor } from './db.js';
import type { DeliveryHandler, BenchPayload, OutgoingMessage, QueueSystem } from './system.js';

const TOPIC = 'bench.topic';
const MAX_POOL = 12;

export interface OursOptions {
  url: string;
  label?: string;
  schema?: string;
  mode?: SubscriptionMode;
  /**
   * 'default': the product's defaults (relay polls every 20 ms, consumers woken by the relay's NOTIFY,
   * batchSize 1000, concurrency 10): the path a user gets without tuning. 'throughput': the drain settings of the
   * old bench/drain.ts (relay batches of 5,000; consumers claim 1,000 at a time; lease mode runs 200 handlers,
   * transactional mode 4 transactions of up to 100 deliveries).
   */
  profile?: 'default' | 'throughput';
  /** Relay every message before the clock starts, so the figure is the consumers' drain rate alone. */
  relayFirst?: boolean;
  /** Subscriptions following the one topic (fan-out). */
  subscriptions?: number;
  /** Another checkout's createOutbox (a before/after comparison); this checkout's by default. */
  create?: typeof createOutbox;
  /** More createOutbox options (tracing). */
  extra?: Partial<OutboxOptions>;
  /** Subscribe options over the profile's (a sweep of batch sizes and concurrency). */
  subscribe?: { batchSize?: number; concurrency?: number };
  /** Relay options over the profile's. */
  relay?: { batchSize?: number; pollIntervalMs?: number };
  /** Runs on each new Outbox that consumes, before it starts (metrics). */
  setUp?: (outbox: Outbox) => Promise<void>;
}

export function oursSystem(options: OursOptions): QueueSystem {
  const {
    url,
    schema = 'bench_outbox',
    mode = 'lease',
    profile = 'default',
    relayFirst = false,
    subscriptions = 1,
    create = createOutbox,
    setUp,
    subscribe: subscribeOverrides = {},
  } = options;
  const throughput = profile === 'throughput';
  const concurrency = throughput ? (mode === 'lease' ? 200 : 4) : 10;
  // The README's sizing: a lease-mode subscription uses up to three pool connections, a transactional one
  // concurrency + 3; the relay and LISTEN connections are opened outside the pool. Capped like the peers' pools:
  // the shared server has 100 connections in all.
  const poolMax = Math.min(subscriptions * (mode === 'lease' ? 3 : concurrency + 3) + 2, MAX_POOL);
  const pool = createPool(url, poolMax);
  const names = Array.from({ length: subscriptions }, (_, i) => `sub_${i}`);
  let outbox: Outbox | null = null;

  const relay = { ...(throughput ? { batchSize: 5000 } : {}), ...options.relay };
  const make = () => create({ pool, schema, relay, ...options.extra });
  const current = (): Outbox => {
    if (outbox === null) throw new Error('pg-outbox system used before reset()');
    return outbox;
  };

  return {
    label: options.label ?? `pg-outbox (${mode}${relayFirst ? ', consumer only' : ''})`,
    settings:
      `schema ${schema}, ${subscriptions} subscription(s), ${mode} mode, ` +
      (throughput
        ? `relay batchSize 5000, consumer batchSize 1000, concurrency ${concurrency}`
        : 'default options (relay batches of 1,000, polling every 20 ms, every 5 ms while messages flow, NOTIFY to ' +
          'consumers; consumers batchSize 1000 with claims sized by their handlers’ rate, concurrency 10)') +
      (relayFirst
        ? '; the relay fans out everything before the clock starts'
        : '; the relay runs in the same Outbox as the consumers') +
      `; pool max ${poolMax}`,
    publishPath: 'outbox.publish() for one message, outbox.publishMany() for many',
    async reset() {
      await outbox?.stop();
      await dropSchemas(pool, schema);
      outbox = make();
      await outbox.migrate();
      for (const name of names) await outbox.declareSubscription(name, { topics: [TOPIC] });
    },
    async publish(client, messages: readonly OutgoingMessage[]) {
      const first = messages[0];
      if (messages.length === 1 && first !== undefined) {
        await current().publish(
          client,
          TOPIC,
          first.payload,
          first.deliverAt ? { deliverAt: first.deliverAt } : {},
        );
        return;
      }
      await current().publishMany(
        client,
        messages.map((m) => ({
          topic: TOPIC,
          payload: m.payload,
          ...(m.deliverAt ? { deliverAt: m.deliverAt } : {}),
        })),
      );
    },
    async prepare(expected) {
      if (relayFirst) {
        // A relay-only Outbox (no consumers registered in it) fans everything out; then it stops.
        const relay = make();
        await relay.start();
        await waitFor(
          'the relay to fan out every message',
          async () =>
            (await count(pool, `SELECT count(*) AS n FROM ${schema}.deliveries`)) >= expected * subscriptions,
        );
        await relay.stop();
      }
      // Autovacuum is off on the shared server; every system gets the VACUUM ANALYZE it would have done.
      await pool.query(`VACUUM ANALYZE ${schema}.messages`);
      await pool.query(`VACUUM ANALYZE ${schema}.deliveries`);
    },
    async start(handler: DeliveryHandler) {
      const box = current();
      const options = {
        topics: [TOPIC],
        mode,
        ...(throughput ? { batchSize: 1000, concurrency } : {}),
        ...subscribeOverrides,
      };
      const deliver = (m: OutboxMessage) => handler(m.payload as BenchPayload);
      for (const name of names) {
        if (mode === 'transactional') box.subscribe(name, { ...options, mode: 'transactional' }, deliver);
        else box.subscribe(name, options, deliver);
      }
      await setUp?.(box);
      await box.start();
    },
    async stop() {
      await outbox?.stop();
    },
    async unacked() {
      // Every subscription follows the one topic: expected deliveries = messages x subscriptions.
      return count(
        pool,
        `SELECT (SELECT count(*) FROM ${schema}.messages) * (SELECT count(*) FROM ${schema}.subscriptions)
              - (SELECT count(*) FROM ${schema}.completed_deliveries) AS n`,
      );
    },
    async close() {
      await outbox?.stop();
      outbox = null;
      await dropSchemas(pool, schema);
      await pool.end();
    },
  };
}
