import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rabbitmq } from '../../src/index.js';
import { attemptedIds, brokerAccount, doneDeliveries, printAccount } from '../helpers/broker-account.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import {
  privateRabbitNodeUnavailable,
  startPrivateRabbitNode,
  type PrivateRabbitNode,
} from '../helpers/rabbitmq-node.js';
import { drainIds } from '../helpers/rabbitmq-side.js';

/*
 * Forwarding to RabbitMQ while the broker restarts mid-stream (rabbitmqctl stop_app, start_app), on a node of this
 * test's own so the restart breaks no other file using the machine's broker. A durable queue bound to a durable
 * exchange holds the persistent messages across the restart; at the end the test reads the queue to its end: lost
 * 0, and a duplicate only for a message sent again after the restart (published before it, confirm lost in it),
 * one extra copy at most.
 */
const N = 5_000;
const BATCH = 250;
/** Twice the most a forwarder holds at once (batchSize, 1,000 by default). */
const AHEAD = 2 * 1000;
const unavailable = privateRabbitNodeUnavailable();
if (unavailable !== undefined) console.warn(`RabbitMQ restart chaos skipped: ${unavailable}`);

describe.skipIf(unavailable !== undefined)('forwarding to RabbitMQ across a broker restart', () => {
  let t: OutboxTestContext;
  let node: PrivateRabbitNode;

  beforeAll(async () => {
    t = await setupOutboxTest();
    node = await startPrivateRabbitNode();
  });
  afterAll(async () => {
    await node?.remove();
    await t?.close();
  });

  it('loses nothing when the broker restarts mid-stream, and duplicates only what was in flight', async () => {
    const [subscription, topic, exchange, queue] = ['fwd_restart', 'fwdchaos.restart', 'chaos-x', 'chaos-q'];
    const setup = await amqp.connect(node.url);
    // stop_app closes this connection with an error; it is not used after that.
    setup.on('error', () => undefined);
    const channel = await setup.createChannel();
    channel.on('error', () => undefined);
    await channel.assertExchange(exchange, 'topic', { durable: true });
    await channel.assertQueue(queue, { durable: true });
    await channel.bindQueue(queue, exchange, `${topic}.#`);

    const outbox = t.outbox();
    await outbox.declareSubscription(subscription, { topics: [topic] });
    outbox.forward(subscription, {
      topics: [topic],
      to: rabbitmq({ url: node.url, exchange, assertExchange: false }),
    });
    await outbox.start();
    // The producer keeps AHEAD messages committed beyond what the forwarder has done, from the start until the
    // broker is back (and N at least): the forwarder, which outruns stop_app, is mid-stream whenever the broker
    // drops its connection, however fast the machine.
    const published: string[] = [];
    let restarted = false;
    const producer = (async () => {
      while (!restarted || published.length < N) {
        await waitFor(
          'the forwarder within AHEAD of the producer',
          async () => published.length - (await doneDeliveries(t.pool, subscription)) < AHEAD,
          45_000,
          20,
        );
        const batch = Array.from({ length: BATCH }, (_, i) => ({
          topic,
          payload: { n: published.length + i },
        }));
        published.push(...(await outbox.publishMany(t.pool, batch)).map((p) => p.id));
      }
    })();
    await waitFor(
      'a third of the messages in the queue',
      async () => (await channel.checkQueue(queue)).messageCount >= N / 3,
      30_000,
      20,
    );

    await node.stopApp();
    const doneAtStop = await doneDeliveries(t.pool, subscription);
    await node.startApp();
    restarted = true;
    await producer;
    await waitFor(
      'every delivery done',
      async () => (await doneDeliveries(t.pool, subscription)) === published.length,
      45_000,
      100,
    );
    const resent = await attemptedIds(t.pool, subscription, { minAttempts: 2, unfinished: false });
    await outbox.stop();

    const reader = await amqp.connect(node.url);
    try {
      const readChannel = await reader.createChannel();
      const account = brokerAccount(published, await drainIds(readChannel, queue));
      printAccount('rabbitmq broker restart', account, { 'done at stop': doneAtStop, resent: resent.size });
      expect(account.lost).toBe(0);
      expect(account.unexpected).toBe(0);
      expect(account.duplicatedIds.filter((id) => !resent.has(id))).toEqual([]);
      expect(account.maxCopies).toBeLessThanOrEqual(2);
      expect(account.duplicated).toBeLessThanOrEqual(resent.size);
      expect(doneAtStop).toBeLessThan(published.length);
      await readChannel.deleteQueue(queue);
      await readChannel.deleteExchange(exchange);
    } finally {
      await reader.close();
    }
  });
});
