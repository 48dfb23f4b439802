import amqp from 'amqplib';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { nats, rabbitmq, type ForwardTarget } from '../../src/index.js';

/** The brokers of the forward scenario: AMQP_URL / NATS_URL, else the local ones (as test/helpers/brokers.ts). */
export const AMQP_URL = process.env['AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';
export const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';

/** The two brokers, and a target that confirms at once: pg-outbox's own side of forwarding, without a broker. */
export type BrokerName = 'RabbitMQ' | 'NATS' | 'no broker';

/** About 1 KB of JSON: the payload of every message, forwarded or published raw. */
export function benchPayload(i: number): { i: number; note: string } {
  return { i, note: 'x'.repeat(1000) };
}

/** Every message of the scenario has this topic: the RabbitMQ routing key and the NATS subject. */
export const FORWARD_TOPIC = 'bench.forward';
export const EXCHANGE = 'pg-outbox-bench-forward';
const QUEUE = 'pg-outbox-bench-forward';
const STREAM = 'PG_OUTBOX_BENCH_FORWARD';

/**
 * The receiving side of one broker, made by the scenario and removed after it: what a run sends lands here, and
 * `received()` counts it, so a run checks on the broker that everything arrived.
 */
export interface BrokerSink {
  name: BrokerName;
  /** Empties the destination before a run (RabbitMQ: purge the queue; JetStream: a new stream). */
  reset(): Promise<void>;
  /** Messages the destination holds now. */
  received(): Promise<number>;
  /** A pg-outbox forward() target aimed at the destination. */
  target(): ForwardTarget;
  /** Removes what the scenario made and closes the connection. */
  close(): Promise<void>;
}

/**
 * RabbitMQ: a durable topic exchange and one durable classic queue bound to every routing key, so the confirm of a
 * persistent message follows its write to the queue's store, as it would in production.
 */
export async function rabbitSink(): Promise<BrokerSink> {
  const model = await amqp.connect(AMQP_URL);
  const channel = await model.createChannel();
  await channel.assertExchange(EXCHANGE, 'topic', { durable: true });
  await channel.assertQueue(QUEUE, { durable: true });
  await channel.bindQueue(QUEUE, EXCHANGE, '#');
  return {
    name: 'RabbitMQ',
    async reset() {
      await channel.purgeQueue(QUEUE);
    },
    async received() {
      return (await channel.checkQueue(QUEUE)).messageCount;
    },
    target: () => rabbitmq({ url: AMQP_URL, exchange: EXCHANGE, assertExchange: false }),
    async close() {
      await channel.deleteQueue(QUEUE);
      await channel.deleteExchange(EXCHANGE);
      await model.close();
    },
  };
}

/**
 * NATS JetStream: a file-backed stream (the server's defaults) capturing the topic. Made anew for every run, so
 * each run starts empty and with an empty duplicate window (pg-outbox's message ids restart in each fresh schema,
 * and JetStream would drop a repeated Nats-Msg-Id as a duplicate).
 */
export async function natsSink(): Promise<BrokerSink> {
  // As nats() connects: without request stack traces, which cost a quarter of a publisher's CPU.
  const connection: NatsConnection = await connect({ servers: NATS_URL, noAsyncTraces: true });
  const manager: JetStreamManager = await jetstreamManager(connection);
  const remove = () => manager.streams.delete(STREAM).catch(() => false);
  const stream = { name: STREAM, subjects: [FORWARD_TOPIC] };
  return {
    name: 'NATS',
    async reset() {
      await remove();
      await manager.streams.add(stream);
    },
    async received() {
      return (await manager.streams.info(STREAM)).state.messages;
    },
    target: () => nats({ servers: NATS_URL, stream }),
    async close() {
      await remove();
      await connection.drain();
    },
  };
}

/** A target whose send() resolves at once (after a turn of the event loop, as a socket's reply would come). */
export function noBrokerSink(): BrokerSink {
  let sent = 0;
  return {
    name: 'no broker',
    reset: () => {
      sent = 0;
      return Promise.resolve();
    },
    received: () => Promise.resolve(sent),
    target: () => ({
      name: 'no broker',
      send: () =>
        new Promise<void>((resolve) =>
          setImmediate(() => {
            sent += 1;
            resolve();
          }),
        ),
      close: () => Promise.resolve(),
    }),
    close: () => Promise.resolve(),
  };
}
