import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { nats, type Outbox } from '../../src/index.js';
import { attemptedIds, brokerAccount, doneDeliveries, printAccount } from '../helpers/broker-account.js';
import { brokerMissing, NATS_URL } from '../helpers/brokers.js';
import { startPrivateNatsServer, streamOutboxIds } from '../helpers/nats-server.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';
import { killChildren, spawnFixture } from './child.js';
import type { ForwarderChildConfig } from './fixtures/forwarder.fixture.js';

/*
 * Forwarding to NATS JetStream under chaos, each run ending with the total-queue account counted on the broker
 * side: the stream's own message count, and the outbox id (header x-outbox-message-id) of every stored message
 * read back. All copies of a message carry one Nats-Msg-Id, so whatever a fault makes the forwarder send again is
 * dropped by the stream within its duplicate window (2 minutes, far longer than these runs): lost 0 and duplicated
 * 0, the stream holds exactly N. Faults are driven by progress on the broker side (a third of the messages stored).
 */
const FIXTURE = fileURLToPath(new URL('./fixtures/forwarder.fixture.ts', import.meta.url));
const N = 5_000;
const LEASE_MS = 3_000;

describe.skipIf(await brokerMissing('NATS', 'NATS JetStream forwarding chaos'))(
  'forwarding to NATS JetStream under chaos',
  () => {
    let t: OutboxTestContext;
    let publisher: Outbox;
    const prefix = `fwdc${randomUUID().replaceAll('-', '').slice(0, 12)}`;

    beforeAll(async () => {
      t = await setupOutboxTest();
      publisher = t.outbox({ relay: { enabled: false }, consumers: false });
    });
    afterEach(killChildren);
    afterAll(async () => t.close());

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

    /** A file-backed stream capturing `subject` on the server `connection` talks to, deleted with the returned call. */
    async function createStream(connection: NatsConnection, name: string, subject: string) {
      const manager = await jetstreamManager(connection);
      await manager.streams.add({ name, subjects: [subject], storage: StorageType.File });
      return manager;
    }
    const stored = async (manager: JetStreamManager, stream: string) =>
      (await manager.streams.info(stream)).state.messages;

    /** Waits until the database counts every delivery done, then reads the stream back and accounts. */
    async function settle(
      connection: NatsConnection,
      manager: JetStreamManager,
      stream: string,
      subscription: string,
      published: string[],
    ) {
      await waitFor(
        'every delivery done',
        async () => (await doneDeliveries(t.pool, subscription)) === N,
        45_000,
        100,
      );
      const count = await stored(manager, stream);
      const ids = await streamOutboxIds(jetstream(connection), stream, count);
      return { count, account: brokerAccount(published, ids) };
    }

    it('stores every message exactly once when the forwarder process is SIGKILLed mid-stream', async () => {
      const [subscription, topic, stream] = ['fwd_kill', `${prefix}.kill`, `${prefix}_KILL`];
      const connection = await connect({ servers: NATS_URL });
      const manager = await createStream(connection, stream, topic);
      const spawnForwarder = () => {
        const config: ForwarderChildConfig = {
          url: t.db.url,
          subscription,
          topics: [topic],
          leaseMs: LEASE_MS,
          target: { broker: 'nats', servers: NATS_URL },
        };
        return spawnFixture(FIXTURE, config);
      };
      try {
        const published = await publishAll(subscription, topic);
        const first = spawnForwarder();
        await waitFor(
          'a third of the messages stored',
          async () => (await stored(manager, stream)) >= N / 3,
          30_000,
          20,
        );
        expect((await first.kill('SIGKILL')).signal).toBe('SIGKILL');
        const atKill = await stored(manager, stream);
        const inFlight = await attemptedIds(t.pool, subscription, { minAttempts: 1, unfinished: true });
        // Stored, yet not recorded done: the next forwarder sends these again and the stream must drop them.
        const storedAtKill = new Set(await streamOutboxIds(jetstream(connection), stream, atKill));
        const storedNotDone = [...inFlight].filter((id) => storedAtKill.has(id)).length;

        const second = spawnForwarder();
        const { count, account } = await settle(connection, manager, stream, subscription, published);
        printAccount('nats forwarder SIGKILL', account, {
          'stored at kill': atKill,
          'in flight at kill': inFlight.size,
          'stream count': count,
          'stored but not done at kill': storedNotDone,
        });
        expect(account).toMatchObject({ lost: 0, unexpected: 0, duplicated: 0 });
        expect(count).toBe(N);
        expect(atKill).toBeLessThan(N);
        expect(await second.kill('SIGTERM')).toEqual({ code: 0, signal: null });
      } finally {
        await manager.streams.delete(stream).catch(() => undefined);
        await connection.close();
      }
    });

    it('stores every message exactly once when the broker connection is cut mid-stream: the client reconnects by itself', async () => {
      const [subscription, topic, stream] = ['fwd_cut', `${prefix}.cut`, `${prefix}_CUT`];
      const connection = await connect({ servers: NATS_URL });
      const manager = await createStream(connection, stream, topic);
      const { hostname, port } = new URL(NATS_URL);
      const proxy = await startTcpProxy({ host: hostname, port: Number(port || 4222) });
      try {
        const published = await publishAll(subscription, topic);
        const outbox = t.outbox();
        outbox.forward(subscription, { topics: [topic], to: nats({ servers: proxy.url(NATS_URL) }) });
        await outbox.start();
        await waitFor(
          'a third of the messages stored',
          async () => (await stored(manager, stream)) >= N / 3,
          30_000,
          20,
        );
        for (const c of proxy.connections) c.destroy();
        const cut = proxy.connections.length;
        const atCut = await stored(manager, stream);

        const { count, account } = await settle(connection, manager, stream, subscription, published);
        const resent = await attemptedIds(t.pool, subscription, { minAttempts: 2, unfinished: false });
        printAccount('nats connection cut', account, {
          'stored at cut': atCut,
          resent: resent.size,
          'stream count': count,
        });
        expect(account).toMatchObject({ lost: 0, unexpected: 0, duplicated: 0 });
        expect(count).toBe(N);
        expect(atCut).toBeLessThan(N);
        expect(proxy.connections.length).toBeGreaterThan(cut);
        await outbox.stop();
      } finally {
        await proxy.close();
        await manager.streams.delete(stream).catch(() => undefined);
        await connection.close();
      }
    });

    it('stores every message exactly once when the NATS server is killed and restarted mid-stream', async () => {
      const [subscription, topic, stream] = ['fwd_restart', `${prefix}.restart`, `${prefix}_RESTART`];
      const server = await startPrivateNatsServer();
      const connection = await connect({ servers: server.url, maxReconnectAttempts: -1 });
      try {
        const manager = await createStream(connection, stream, topic);
        const published = await publishAll(subscription, topic);
        const outbox = t.outbox();
        outbox.forward(subscription, { topics: [topic], to: nats({ servers: server.url }) });
        await outbox.start();
        await waitFor(
          'a third of the messages stored',
          async () => (await stored(manager, stream)) >= N / 3,
          30_000,
          20,
        );
        await server.kill('SIGKILL');
        const doneAtKill = await doneDeliveries(t.pool, subscription);
        await server.start();
        // What the store kept: everything acked before the kill, at least.
        const afterRestart = await waitFor('the stream back', () => stored(manager, stream), 20_000, 100);

        const { count, account } = await settle(connection, manager, stream, subscription, published);
        const resent = await attemptedIds(t.pool, subscription, { minAttempts: 2, unfinished: false });
        printAccount('nats server SIGKILL + restart', account, {
          'done at kill': doneAtKill,
          'stored after restart': afterRestart,
          resent: resent.size,
          'stream count': count,
        });
        expect(afterRestart).toBeGreaterThanOrEqual(doneAtKill);
        expect(account).toMatchObject({ lost: 0, unexpected: 0, duplicated: 0 });
        expect(count).toBe(N);
        expect(doneAtKill).toBeLessThan(N);
        await outbox.stop();
      } finally {
        await connection.close().catch(() => undefined);
        await server.remove();
      }
    });
  },
);
