import { randomUUID } from 'node:crypto';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nats } from '../../src/index.js';
import { brokerMissing, NATS_URL } from '../helpers/brokers.js';
import { doneCount, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

describe.skipIf(await brokerMissing('NATS', 'forwarding to NATS JetStream'))(
  'forward to NATS JetStream',
  () => {
    let t: OutboxTestContext;
    let connection: NatsConnection;
    let manager: JetStreamManager;
    const id = randomUUID().replaceAll('-', '').slice(0, 12);
    const stream = `OUTBOX_TEST_${id}`;
    const prefix = `fwdn${id}`;

    beforeAll(async () => {
      t = await setupOutboxTest();
      connection = await connect({ servers: NATS_URL });
      manager = await jetstreamManager(connection);
    });
    afterAll(async () => {
      await manager.streams.delete(stream).catch(() => undefined);
      await connection.close();
      await t.close();
    });

    const done = (subscription: string) => doneCount(t.pool, subscription);
    const messagesInStream = async () => (await manager.streams.info(stream)).state.messages;

    it('publishes each message once with Nats-Msg-Id = its id, done on the PubAck, and JetStream drops a second copy', async () => {
      const outbox = t.outbox();
      const to = nats({ servers: NATS_URL, stream: { name: stream, subjects: [`${prefix}.>`] } });
      outbox.forward('to-nats', { topics: [`${prefix}.#`], to });
      await outbox.start();
      const published = await outbox.publishMany(
        t.pool,
        Array.from({ length: 300 }, (_, i) => ({
          topic: `${prefix}.orders.${i % 3}`,
          key: `k${i % 7}`,
          payload: { i },
          headers: { tenant: 'acme' },
        })),
      );
      await waitFor('all 300 acked and done', async () => (await done('to-nats')) === 300);
      expect(await messagesInStream()).toBe(300);

      const first = await manager.streams.getMessage(stream, { seq: 1 });
      expect(first).not.toBeNull();
      const ids = new Set(published.map((p) => p.id));
      const plainId = first!.header.get('x-outbox-message-id');
      expect(ids.has(plainId)).toBe(true);
      expect(first!.header.get('Nats-Msg-Id')).toMatch(new RegExp(`^${plainId}-\\d+$`));
      expect(first!.header.get('x-outbox-topic')).toBe(first!.subject);
      expect(first!.header.get('tenant')).toBe('acme');
      expect(typeof first!.json<{ i: number }>().i).toBe('number');

      // Sent again (a replay of everything since before the first): every delivery is done a second time, but the
      // stream keeps one copy per message id within its duplicate window.
      const since = new Date(Date.now() - 60_000);
      expect((await outbox.replay('to-nats', { since })).replayed).toBe(300);
      await waitFor('the replayed 300 done', async () => (await done('to-nats')) === 600);
      expect(await messagesInStream()).toBe(300);
      await outbox.stop();
    });

    it('keeps the messages of two schemas apart in one stream although their ids are the same', async () => {
      const subjects = [`${prefix}b.>`];
      const streamB = `${stream}_B`;
      const received: number[] = [];
      for (const schema of ['outbox_fwd_a', 'outbox_fwd_b']) {
        const outbox = t.outbox({ schema });
        await outbox.migrate();
        outbox.forward('to-nats', {
          topics: [`${prefix}b.#`],
          to: nats({ servers: NATS_URL, stream: { name: streamB, subjects } }),
        });
        await outbox.start();
        const [first] = await outbox.publishMany(t.pool, [{ topic: `${prefix}b.x`, payload: { schema } }]);
        expect(first!.id).toBe('1'); // each schema's first message
        await waitFor(`${schema} forwarded`, async () => (await doneCount(t.pool, 'to-nats', schema)) === 1);
        received.push((await manager.streams.info(streamB)).state.messages);
        await outbox.stop();
      }
      expect(received).toEqual([1, 2]);
      await manager.streams.delete(streamB);
    });

    it('fails a publish no stream captures, and dead-letters it at maxAttempts', async () => {
      const outbox = t.outbox();
      outbox.forward('to-nats-lost', {
        topics: ['nowhere.#'],
        to: nats({ servers: NATS_URL, ackTimeoutMs: 2_000 }),
        maxAttempts: 2,
        retry: { minDelayMs: 10, maxDelayMs: 10 },
      });
      await outbox.start();
      await outbox.publish(t.pool, `nowhere.${id}`, { n: 1 });
      const dead = await waitFor('a dead letter', async () => {
        const letters = await outbox.deadLetters('to-nats-lost');
        return letters.length === 1 ? letters : undefined;
      });
      expect(dead[0]).toMatchObject({ attempt: 2 });
      expect(dead[0]!.lastError).toMatch(/no responders|503|stream/i);
      await outbox.stop();
    });
  },
);
