import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rabbitmq, type Outbox } from '../../src/index.js';
import {
  attemptedIds,
  brokerAccount,
  doneDeliveries,
  printAccount,
  type BrokerAccount,
} from '../helpers/broker-account.js';
import { AMQP_URL, brokerMissing } from '../helpers/brokers.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { collectIds } from '../helpers/rabbitmq-side.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';
import { killChildren, spawnFixture, type ConsumerChild } from './child.js';
import type { ForwarderChildConfig } from './fixtures/forwarder.fixture.js';

/*
 * Forwarding to RabbitMQ under chaos, each run ending with the total-queue account counted on the broker side: the
 * test's own queue, bound to the exchange, records every copy the broker routes. Lost 0; a duplicate is allowed
 * only for a message sent again after the fault (its first publish reached the broker, its confirm or its "done"
 * did not): after a SIGKILL, one the dead process had claimed and not recorded done (with confirmed publishes
 * waiting to be recorded, seen: up to 800 at a kill, 600 of them already on the broker); after a cut, one attempted
 * again. One extra copy at most.
 * Faults are driven by progress on the broker side (a third of the messages received), never by the clock.
 */
const FIXTURE = fileURLToPath(new URL('./fixtures/forwarder.fixture.ts', import.meta.url));
const N = 5_000;
const LEASE_MS = 3_000;

describe.skipIf(await brokerMissing('RabbitMQ', 'RabbitMQ forwarding chaos'))(
  'forwarding to RabbitMQ under chaos',
  () => {
    let t: OutboxTestContext;
    let publisher: Outbox;
    let broker: ChannelModel;
    let channel: Channel;
    const exchange = `pg-outbox-chaos-${randomUUID()}`;

    beforeAll(async () => {
      t = await setupOutboxTest();
      publisher = t.outbox({ relay: { enabled: false }, consumers: false });
      broker = await amqp.connect(AMQP_URL);
      channel = await broker.createChannel();
      await channel.assertExchange(exchange, 'topic', { durable: true });
    });
    afterEach(killChildren);
    afterAll(async () => {
      await channel.deleteExchange(exchange).catch(() => undefined);
      await broker.close().catch(() => undefined);
      await t.close();
    });

    /** Declares the subscription (so the relay fans out to it), then commits N messages; returns their ids. */
    async function publishAll(subscription: string, topic: string): Promise<string[]> {
      await publisher.declareSubscription(subscription, { topics: [topic] });
      const ids: string[] = [];
      for (let from = 0; from < N; from += 1_000) {
        const batch = Array.from({ length: 1_000 }, (_, i) => ({ topic, payload: { n: from + i } }));
        ids.push(...(await publisher.publishMany(t.pool, batch)).map((p) => p.id));
      }
      return ids;
    }

    function spawnForwarder(subscription: string, topic: string): ConsumerChild {
      const config: ForwarderChildConfig = {
        url: t.db.url,
        subscription,
        topics: [topic],
        leaseMs: LEASE_MS,
        target: { broker: 'rabbitmq', url: AMQP_URL, exchange },
      };
      return spawnFixture(FIXTURE, config);
    }

    /** Waits until the database counts every delivery done and the queue has seen every id, then accounts. */
    async function settle(subscription: string, published: string[], received: string[]) {
      await waitFor(
        'every delivery done',
        async () => (await doneDeliveries(t.pool, subscription)) === N,
        45_000,
        100,
      );
      // A confirm can reach the forwarder before the copy reaches our consumer. A lost id times out here, and the
      // account says how many.
      await waitFor(
        'the queue received every id',
        () => {
          const got = new Set(received);
          return published.every((id) => got.has(id));
        },
        10_000,
        50,
      ).catch(() => undefined);
      return brokerAccount(published, received);
    }

    /**
     * Lost 0; a duplicate only of a message the fault made the forwarder send again (`resendable`), one extra copy
     * at most: one fault, one resend of what it had in flight.
     */
    function expectNoLoss(account: BrokerAccount, resendable: Set<string>) {
      expect(account.lost).toBe(0);
      expect(account.unexpected).toBe(0);
      expect(account.duplicatedIds.filter((id) => !resendable.has(id))).toEqual([]);
      expect(account.maxCopies).toBeLessThanOrEqual(2);
      expect(account.duplicated).toBeLessThanOrEqual(resendable.size);
    }

    it('loses nothing when the forwarder process is SIGKILLed mid-stream, and duplicates only what it had in flight', async () => {
      const [subscription, topic] = ['fwd_kill', 'fwdchaos.kill'];
      const received = await collectIds(channel, exchange, `${topic}.#`);
      const published = await publishAll(subscription, topic);

      const first = spawnForwarder(subscription, topic);
      await waitFor('a third of the messages on the broker side', () => received.length >= N / 3, 30_000);
      expect((await first.kill('SIGKILL')).signal).toBe('SIGKILL');
      const atKill = received.length;
      // The dead process's unfinished attempts: sent, maybe confirmed, never recorded done.
      const inFlight = await attemptedIds(t.pool, subscription, { minAttempts: 1, unfinished: true });

      const second = spawnForwarder(subscription, topic);
      const account = await settle(subscription, published, received);
      printAccount('rabbitmq forwarder SIGKILL', account, {
        'received at kill': atKill,
        'in flight at kill': inFlight.size,
      });
      expectNoLoss(account, inFlight);
      expect(atKill).toBeLessThan(N);
      expect(await second.kill('SIGTERM')).toEqual({ code: 0, signal: null });
    });

    /** A forwarder in this process whose broker connection runs through a proxy the test can cut. */
    async function proxiedForwarder(subscription: string, topic: string, query = '') {
      const proxy = await startTcpProxy({
        host: new URL(AMQP_URL).hostname,
        port: Number(new URL(AMQP_URL).port || 5672),
      });
      const outbox = t.outbox();
      outbox.forward(subscription, {
        topics: [topic],
        to: rabbitmq({ url: `${proxy.url(AMQP_URL)}${query}`, exchange, assertExchange: false }),
      });
      return { proxy, outbox };
    }

    it('loses nothing when the broker connection is cut mid-stream: the forwarder connects again by itself', async () => {
      const [subscription, topic] = ['fwd_cut', 'fwdchaos.cut'];
      const received = await collectIds(channel, exchange, `${topic}.#`);
      const published = await publishAll(subscription, topic);
      const { proxy, outbox } = await proxiedForwarder(subscription, topic);
      try {
        await outbox.start();
        await waitFor('a third of the messages on the broker side', () => received.length >= N / 3, 30_000);
        const atCut = received.length;
        for (const c of proxy.connections) c.destroy();
        const cut = proxy.connections.length;

        const account = await settle(subscription, published, received);
        const resent = await attemptedIds(t.pool, subscription, { minAttempts: 2, unfinished: false });
        printAccount('rabbitmq connection cut', account, { 'received at cut': atCut, resent: resent.size });
        expectNoLoss(account, resent);
        expect(atCut).toBeLessThan(N);
        expect(proxy.connections.length).toBeGreaterThan(cut);
        await outbox.stop();
      } finally {
        await proxy.close();
      }
    });

    it('loses nothing when the broker connection goes silent mid-stream: the heartbeat notices, the forwarder connects again', async () => {
      const [subscription, topic] = ['fwd_silent', 'fwdchaos.silent'];
      const received = await collectIds(channel, exchange, `${topic}.#`);
      const published = await publishAll(subscription, topic);
      // A 2 s heartbeat: amqplib gives up on a connection that has been silent for two to three intervals.
      const { proxy, outbox } = await proxiedForwarder(subscription, topic, '?heartbeat=2');
      try {
        await outbox.start();
        await waitFor('a third of the messages on the broker side', () => received.length >= N / 3, 30_000);
        const atCut = received.length;
        for (const c of proxy.connections) c.blackHole();
        const silenced = proxy.connections.length;

        const account = await settle(subscription, published, received);
        const resent = await attemptedIds(t.pool, subscription, { minAttempts: 2, unfinished: false });
        printAccount('rabbitmq connection black-holed', account, {
          'received at black-hole': atCut,
          resent: resent.size,
        });
        expectNoLoss(account, resent);
        expect(atCut).toBeLessThan(N);
        expect(proxy.connections.length).toBeGreaterThan(silenced);
        await outbox.stop();
      } finally {
        await proxy.close();
      }
    });
  },
);
