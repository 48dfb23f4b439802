import { randomUUID } from 'node:crypto';
import amqp, { type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rabbitmq } from '../../src/index.js';
import { AMQP_URL, brokerMissing } from '../helpers/brokers.js';
import { doneCount, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

describe.skipIf(await brokerMissing('RabbitMQ', 'forwarding to RabbitMQ'))('forward to RabbitMQ', () => {
  let t: OutboxTestContext;
  let broker: ChannelModel;
  let channel: Channel;
  const exchange = `pg-outbox-test-${randomUUID()}`;
  /** What the test's queue received, in arrival order. */
  const received: ConsumeMessage[] = [];

  beforeAll(async () => {
    t = await setupOutboxTest();
    broker = await amqp.connect(AMQP_URL);
    channel = await broker.createChannel();
    await channel.assertExchange(exchange, 'topic', { durable: false, autoDelete: true });
    const { queue } = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(queue, exchange, 'fwd.#');
    await channel.consume(queue, (m) => m && received.push(m), { noAck: true });
  });
  afterAll(async () => {
    await broker.close();
    await t.close();
  });

  const done = (subscription: string) => doneCount(t.pool, subscription);
  const target = () => rabbitmq({ url: AMQP_URL, exchange, assertExchange: false });
  /** A message's publish time in ms: with its id, the messageId it is forwarded under. */
  const createdAt = async (id: string) =>
    (
      await t.pool.query<{ at: Date }>('SELECT created_at AS at FROM outbox.messages WHERE id = $1', [id])
    ).rows[0]!.at.getTime();

  it('publishes every message once with its id, topic, key, headers and payload, and counts it done on the confirm', async () => {
    const outbox = t.outbox();
    outbox.forward('to-rabbit', { topics: ['fwd.plain.#'], to: target() });
    await outbox.start();
    const published = await outbox.publishMany(
      t.pool,
      Array.from({ length: 300 }, (_, i) => ({
        topic: `fwd.plain.${i % 3}`,
        key: i % 2 === 0 ? `k${i % 5}` : undefined,
        payload: { i },
        headers: { tenant: 'acme' },
      })),
    );
    await waitFor('all 300 confirmed and done', async () => (await done('to-rabbit')) === 300);
    await waitFor('all 300 received', () => received.length >= 300);
    const ids = received.map((m) =>
      String((m.properties.headers as Record<string, unknown>)['x-outbox-message-id']),
    );
    expect(new Set(ids).size).toBe(300);
    expect([...ids].sort()).toEqual(published.map((p) => p.id).sort());
    const forwardId = `${published[0]!.id}-${await createdAt(published[0]!.id)}`;
    const first = received.find((m) => m.properties.messageId === forwardId)!;
    expect(JSON.parse(first.content.toString())).toEqual({ i: 0 });
    expect(first.fields.routingKey).toBe('fwd.plain.0');
    expect(first.properties).toMatchObject({
      type: 'fwd.plain.0',
      contentType: 'application/json',
      deliveryMode: 2,
    });
    expect(first.properties.headers).toMatchObject({
      tenant: 'acme',
      'x-outbox-message-id': published[0]!.id,
      'x-outbox-topic': 'fwd.plain.0',
      'x-outbox-key': 'k0',
    });
    await outbox.stop();
  });

  it('keeps per-key order on the broker side for an ordered subscription', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('to-rabbit-ordered', { topics: ['fwd.ordered'], ordered: true });
    outbox.forward('to-rabbit-ordered', { topics: ['fwd.ordered'], to: target() });
    await outbox.start();
    const before = received.length;
    await outbox.publishMany(
      t.pool,
      Array.from({ length: 200 }, (_, i) => ({ topic: 'fwd.ordered', key: `k${i % 4}`, payload: { i } })),
    );
    await waitFor('all 200 done', async () => (await done('to-rabbit-ordered')) === 200);
    await waitFor('all 200 received', () => received.length >= before + 200);
    const byKey = new Map<string, number[]>();
    for (const m of received.slice(before)) {
      const key = String((m.properties.headers as Record<string, unknown>)['x-outbox-key']);
      byKey.set(key, [...(byKey.get(key) ?? []), (JSON.parse(m.content.toString()) as { i: number }).i]);
    }
    for (const sequence of byKey.values()) expect(sequence).toEqual([...sequence].sort((a, b) => a - b));
    expect(byKey.size).toBe(4);
    await outbox.stop();
  });

  it('fails a message no queue is bound for (mandatory), and dead-letters it at maxAttempts', async () => {
    const outbox = t.outbox();
    outbox.forward('to-rabbit-lost', {
      topics: ['lost.#'],
      to: target(),
      maxAttempts: 2,
      retry: { minDelayMs: 10, maxDelayMs: 10 },
    });
    await outbox.start();
    await outbox.publish(t.pool, 'lost.message', { n: 1 });
    const dead = await waitFor('a dead letter', async () => {
      const letters = await outbox.deadLetters('to-rabbit-lost');
      return letters.length === 1 ? letters : undefined;
    });
    expect(dead[0]).toMatchObject({ attempt: 2, topic: 'lost.message' });
    expect(dead[0]!.lastError).toContain(
      `no queue is bound to exchange "${exchange}" for routing key "lost.message"`,
    );
    await outbox.stop();
  });

  it('retries through a channel the broker closed (a missing exchange) until the exchange exists', async () => {
    const late = `pg-outbox-test-late-${randomUUID()}`;
    const outbox = t.outbox();
    outbox.forward('to-rabbit-late', {
      topics: ['fwd.late'],
      to: rabbitmq({ url: AMQP_URL, exchange: late, assertExchange: false }),
      retry: { minDelayMs: 20, maxDelayMs: 20 },
    });
    await outbox.start();
    const { id } = await outbox.publish(t.pool, 'fwd.late', { n: 1 });
    await waitFor('a failed attempt (404: no exchange)', async () => {
      const journey = await outbox.journey(id);
      return (journey?.failures.length ?? 0) > 0;
    });
    await channel.assertExchange(late, 'topic', { durable: false, autoDelete: true });
    const { queue } = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(queue, late, '#');
    await waitFor('done after the exchange appeared', async () => (await done('to-rabbit-late')) === 1);
    const got = (await channel.get(queue, { noAck: true })) || null;
    expect(got?.properties.headers?.['x-outbox-message-id']).toBe(id);
    await outbox.stop();
  });
});
