import { randomUUID } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { propagation, ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nats, rabbitmq, type ForwardTarget, type Outbox } from '../../src/index.js';
import { AMQP_URL, brokerMissing, NATS_URL } from '../helpers/brokers.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// The trace of a forwarded message: publish (`send`) → forward (`process`, its child) → whoever consumes from the
// broker (a child of `process`, by the traceparent the broker message carries). With tracing off the broker
// message carries the message's own headers.

/** The broker end of a test: a target to forward to, and the headers of what the broker holds. */
interface BrokerSide {
  /** Topics are `<prefix>.<anything>`: the broker takes them (a bound queue, a stream's subjects). */
  prefix: string;
  target(): ForwardTarget;
  /** The headers of the latest message the broker holds for a topic; undefined while there is none. */
  headers(topic: string): Promise<Record<string, string> | undefined>;
  close(): Promise<void>;
}

const suffix = () => randomUUID().replaceAll('-', '').slice(0, 12);

/** A queue bound to a fresh exchange for every routing key; the test reads what it received. */
async function rabbitSide(): Promise<BrokerSide> {
  const exchange = `pg-outbox-test-${randomUUID()}`;
  const broker = await amqp.connect(AMQP_URL);
  const channel = await broker.createChannel();
  await channel.assertExchange(exchange, 'topic', { durable: false, autoDelete: true });
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(queue, exchange, '#');
  const received = new Map<string, Record<string, string>>();
  await channel.consume(
    queue,
    (m) => m && received.set(m.fields.routingKey, m.properties.headers as Record<string, string>),
    { noAck: true },
  );
  return {
    prefix: `ft${suffix()}`,
    target: () => rabbitmq({ url: AMQP_URL, exchange, assertExchange: false }),
    headers: (topic) => Promise.resolve(received.get(topic)),
    close: () => broker.close(),
  };
}

/**
 * A stream made before the forwarder starts; the test reads a subject's last message from it. nats-server 2.9
 * (Debian's) crashes on a message-get request it cannot answer (a nil dereference in jsMsgGetRequest, seen when
 * the stream or the subject's message was not there yet), taking the machine's NATS down for every other test:
 * so the stream exists from the start, and the message is fetched only once the stream's info counts one on the
 * subject.
 */
async function natsSide(): Promise<BrokerSide> {
  const id = suffix();
  const stream = `OUTBOX_TRACE_${id}`;
  const prefix = `ft${id}`;
  const subjects = [`${prefix}.>`];
  const connection = await connect({ servers: NATS_URL });
  const manager = await jetstreamManager(connection);
  await manager.streams.add({ name: stream, subjects });
  return {
    prefix,
    target: () => nats({ servers: NATS_URL, stream: { name: stream, subjects } }),
    async headers(topic) {
      const info = await manager.streams.info(stream, { subjects_filter: topic });
      if ((info.state.subjects?.[topic] ?? 0) === 0) return undefined;
      const stored = await manager.streams.getMessage(stream, { last_by_subj: topic });
      if (stored === null) return undefined;
      return Object.fromEntries(stored.header.keys().map((name) => [name, stored.header.get(name)]));
    },
    async close() {
      await manager.streams.delete(stream).catch(() => undefined);
      await connection.close();
    },
  };
}

const brokers = [
  {
    broker: 'RabbitMQ',
    missing: await brokerMissing('RabbitMQ', 'forward tracing to RabbitMQ'),
    open: rabbitSide,
  },
  {
    broker: 'NATS JetStream',
    missing: await brokerMissing('NATS', 'forward tracing to NATS JetStream'),
    open: natsSide,
  },
];

describe('forward with tracing', () => {
  let t: OutboxTestContext;
  const exporter = new InMemorySpanExporter();
  const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const tracer = trace.getTracer('forward-tracing-test');

  beforeAll(async () => {
    provider.register();
    t = await setupOutboxTest();
  });
  afterAll(async () => {
    await t?.close();
    await provider.shutdown();
  });

  /** Publishes inside an active `checkout` span, as a traced service would: the message id and that span's id. */
  const publishInSpan = (outbox: Outbox, topic: string, headers?: Record<string, string>) =>
    tracer.startActiveSpan('checkout', async (span) => {
      try {
        const { id } = await outbox.publish(t.pool, topic, { n: 1 }, { headers });
        return { id, checkout: span.spanContext().spanId };
      } finally {
        span.end();
      }
    });
  const span = (label: string, found: (s: ReadableSpan) => boolean) =>
    waitFor(label, () => exporter.getFinishedSpans().find(found));
  /** The span context a consumer of the broker continues from: what the registered propagator reads. */
  const remoteParent = (headers: Record<string, string>) =>
    trace.getSpanContext(propagation.extract(ROOT_CONTEXT, headers));

  /** Message id's exporter spans: its send span, and the process span of the attempt the broker took (an
   * attempt that failed, say on a broker restart, has a process span of its own). */
  const publishedAndForwarded = async (topic: string, id: string, headers: Record<string, string>) => ({
    send: await span(
      'the send span',
      (s) => s.name === `send ${topic}` && s.attributes['messaging.message.id'] === id,
    ),
    forwarded: await span(
      'the process span the broker message names as parent',
      (s) =>
        s.name === `process ${topic}` &&
        s.attributes['messaging.message.id'] === id &&
        s.spanContext().spanId === remoteParent(headers)?.spanId,
    ),
  });

  for (const { broker, missing, open } of brokers) {
    describe.skipIf(missing)(`to ${broker}`, () => {
      let side: BrokerSide;
      beforeAll(async () => {
        side = await open();
      });
      afterAll(async () => {
        await side?.close();
      });

      it('sends the broker the trace context of the forwarder’s process span, a child of the send span', async () => {
        const topic = `${side.prefix}.on`;
        const outbox = t.outbox();
        const to = side.target();
        outbox.forward(`traced-${side.prefix}`, { topics: [topic], to });
        await outbox.start();
        const { id, checkout } = await publishInSpan(outbox, topic, { tenant: 'acme' });
        const headers = await waitFor('the broker holds the message', () => side.headers(topic));

        const { send, forwarded } = await publishedAndForwarded(topic, id, headers);
        expect(send.parentSpanContext?.spanId).toBe(checkout);
        expect(forwarded.parentSpanContext?.spanId).toBe(send.spanContext().spanId);
        expect(forwarded.spanContext().traceId).toBe(send.spanContext().traceId);

        expect(remoteParent(headers)?.traceId).toBe(send.spanContext().traceId);
        expect(headers.traceparent).toBe(
          `00-${send.spanContext().traceId}-${forwarded.spanContext().spanId}-01`,
        );
        expect(forwarded.attributes['pg_outbox.forward.target']).toBe(to.name);
        expect(headers).toMatchObject({ tenant: 'acme', 'x-outbox-message-id': id, 'x-outbox-topic': topic });
        await outbox.stop();
      });

      it('in link mode sends the process span’s own trace, and the message’s baggage with it', async () => {
        const topic = `${side.prefix}.linked`;
        const outbox = t.outbox({ tracing: { link: true } });
        outbox.forward(`linked-${side.prefix}`, { topics: [topic], to: side.target() });
        await outbox.start();
        const { id } = await publishInSpan(outbox, topic, { baggage: 'tenant=acme' });
        const headers = await waitFor('the broker holds the message', () => side.headers(topic));

        const { send, forwarded } = await publishedAndForwarded(topic, id, headers);
        expect(forwarded.spanContext().traceId).not.toBe(send.spanContext().traceId);
        expect(forwarded.links.map((l) => l.context.spanId)).toEqual([send.spanContext().spanId]);
        expect(remoteParent(headers)?.traceId).toBe(forwarded.spanContext().traceId);
        expect(headers.baggage).toBe('tenant=acme');
        await outbox.stop();
      });

      it('sends the broker the publisher’s traceparent unchanged with tracing: false, and none when none was set', async () => {
        const [traced, plain] = [`${side.prefix}.off.traced`, `${side.prefix}.off.plain`];
        const publisher = t.outbox({ relay: { enabled: false }, consumers: false });
        const quiet = t.outbox({ tracing: false });
        const subscription = `quiet-${side.prefix}`;
        quiet.forward(subscription, { topics: [`${side.prefix}.off.#`], to: side.target() });
        await quiet.start();
        const { id } = await publishInSpan(publisher, traced);
        const plainId = (await quiet.publish(t.pool, plain, {}, { headers: { 'x-own': 'yes' } })).id;
        const tracedHeaders = await waitFor('the traced message at the broker', () => side.headers(traced));
        const plainHeaders = await waitFor('the plain message at the broker', () => side.headers(plain));

        const send = await span(
          'the send span',
          (s) => s.name === `send ${traced}` && s.attributes['messaging.message.id'] === id,
        );
        expect(tracedHeaders.traceparent).toBe(
          `00-${send.spanContext().traceId}-${send.spanContext().spanId}-01`,
        );
        expect(remoteParent(tracedHeaders)?.spanId).toBe(send.spanContext().spanId);
        const byQuiet = exporter
          .getFinishedSpans()
          .filter((s) => s.attributes['messaging.consumer.group.name'] === subscription);
        expect(byQuiet).toEqual([]);

        expect(plainHeaders).toMatchObject({ 'x-own': 'yes', 'x-outbox-message-id': plainId });
        expect(plainHeaders).not.toHaveProperty('traceparent');
        expect(plainHeaders).not.toHaveProperty('tracestate');
        await quiet.stop();
      });
    });
  }
});
