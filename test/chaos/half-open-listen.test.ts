import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox, type Outbox } from '../../src/index.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { hostAndPort, startTcpProxy, type ProxiedConnection, type TcpProxy } from '../helpers/tcp-proxy.js';

const TOPIC = 'halfopen.work';
/** Polls every half second: shows that work keeps flowing while no wake-up arrives. */
const FAST = 'halfopen_fast';
const FAST_POLL_MS = 500;
/**
 * Polls once at start, then practically never (and its leases outlast the test, so no lease end wakes it either):
 * a message published after its start that it handles at all, before the test ends, was brought by a wake-up over
 * the LISTEN connection, nothing else.
 */
const SLOW = 'halfopen_slow';
const SLOW_POLL_MS = 300_000;
const SLOW_LEASE_MS = 120_000;
/** Deadlines for conditions, not measurements: far below the slow consumer's poll, room for a loaded machine. */
const HANDLED_DEADLINE_MS = 30_000;
/** The listener pings every 10 s and gives up on a ping after 5 s (src/runtime/listener.ts); twice, and room. */
const DETECTION_DEADLINE_MS = 2 * (10_000 + 5_000) + 10_000;

describe('a LISTEN connection that goes silent without closing (half-open)', () => {
  let t: OutboxTestContext;
  let relay: Outbox;
  let proxy: TcpProxy;
  let proxiedPool: pg.Pool;
  let consumer: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    relay = t.outbox();
    await relay.start();
    proxy = await startTcpProxy(hostAndPort(t.db.url), ['LISTEN ']);
    proxiedPool = new pg.Pool({ connectionString: proxy.url(t.db.url), max: 10 });
    // The consumers' Outbox reaches Postgres only through the proxy: pool, claims, acks and its LISTEN connection.
    consumer = createOutbox({
      pool: proxiedPool,
      logger: testLogger,
      relay: { enabled: false },
      shutdownTimeoutMs: 2_000,
    });
  });
  afterAll(async () => {
    // A pg client ends by waiting for its socket to close, which a black-holed connection never does: should the
    // test fail before the listener drops it, close it first so stop() cannot hang.
    for (const c of proxy?.connections ?? []) if (c.silent) c.destroy();
    await consumer?.stop();
    await proxiedPool?.end();
    await proxy?.close();
    await t?.close();
  });

  it('keeps messages flowing by polling, then replaces the connection and wakes consumers at once again', async () => {
    await relay.declareSubscription(FAST, { topics: [TOPIC] });
    await relay.declareSubscription(SLOW, { topics: [TOPIC] });
    const fastSeen = new Map<string, number>();
    const slowSeen = new Map<string, number>();
    const listenerErrors: { at: number; message: string }[] = [];
    consumer.on('error', (error, { component }) => {
      if (component === 'listener') listenerErrors.push({ at: Date.now(), message: String(error) });
    });
    consumer.subscribe(FAST, { topics: [TOPIC], pollIntervalMs: FAST_POLL_MS }, (m) => {
      fastSeen.set(m.id, Date.now());
    });
    consumer.subscribe(
      SLOW,
      { topics: [TOPIC], pollIntervalMs: SLOW_POLL_MS, leaseMs: SLOW_LEASE_MS },
      (m) => {
        slowSeen.set(m.id, Date.now());
      },
    );
    const listenConnections = (): ProxiedConnection[] => proxy.connections.filter((c) => c.saw('LISTEN '));
    const published: string[] = [];
    /** Publishes one message and waits until every consumer in `by` has handled it; returns the latency. */
    const publishAndWait = async (by: Map<string, number>[]): Promise<number> => {
      const sentAt = Date.now();
      const { id } = await relay.publish(t.pool, TOPIC, { n: published.length });
      published.push(id);
      const at = await waitFor(
        `message ${id} handled`,
        () => {
          const times = by.map((seen) => seen.get(id) ?? NaN);
          return times.every((x) => !Number.isNaN(x)) ? Math.max(...times) : undefined;
        },
        HANDLED_DEADLINE_MS,
      );
      return at - sentAt;
    };

    await consumer.start();
    const first = await waitFor('the LISTEN connection', () => listenConnections()[0]);
    expect(proxy.connections.length).toBeGreaterThan(1); // pool connections beside it
    // With a working LISTEN connection, the slow consumer is woken.
    const latencies = { woken: [await publishAndWait([fastSeen, slowSeen])], polled: [] as number[] };

    // (a) The LISTEN connection goes silent, no FIN and no RST: notifications stop, nothing says so.
    first.blackHole();
    const silentAt = Date.now();
    const silentFrom = published.length;
    const detectionDeadline = Date.now() + DETECTION_DEADLINE_MS;
    do {
      latencies.polled.push(await publishAndWait([fastSeen]));
      expect(Date.now(), 'the listener reports the silent connection').toBeLessThan(detectionDeadline);
    } while (listenerErrors.length === 0);
    const silent = published.slice(silentFrom);

    // (b) The ping finds the connection silent: an error event, and a new LISTEN connection through the proxy.
    const detectedAt = listenerErrors[0]?.at ?? 0;
    expect(listenerErrors[0]?.message).toMatch(/LISTEN connection silent for 5000 ms/);
    // Messages kept flowing by polling while the connection was silent and nothing had noticed yet: all but the
    // last one (which may have been waiting when the ping gave up) were handled before the listener's report.
    const polledBeforeReport = silent.filter((id) => (fastSeen.get(id) ?? Infinity) < detectedAt);
    expect(polledBeforeReport.length).toBeGreaterThanOrEqual(Math.max(1, silent.length - 1));
    const second = await waitFor('a second LISTEN connection', () => listenConnections()[1]);
    expect([first.silent, second.silent]).toEqual([true, false]);
    expect(listenConnections().map((c) => c.id)).toEqual([first.id, second.id]);
    // The slow consumer saw none of the messages published while the connection was silent until the listener
    // reconnected: their notifications were lost, and the reconnect's nudge brought them.
    await waitFor(
      'the slow consumer caught up after the reconnect',
      () => silent.every((id) => slowSeen.has(id)),
      HANDLED_DEADLINE_MS,
    );
    for (const id of silent) expect(slowSeen.get(id)).toBeGreaterThanOrEqual(detectedAt);

    // (c) Wake-ups are back: every new message reaches the slow consumer, which would not poll before 300 s.
    for (let i = 0; i < 5; i += 1) latencies.woken.push(await publishAndWait([fastSeen, slowSeen]));
    expect(listenerErrors).toHaveLength(1);
    // Printed, not asserted: a test never asserts a timing.
    console.info(
      `half-open LISTEN: woken in ${latencies.woken.join(', ')} ms; while silent, polled in ` +
        `${latencies.polled.join(', ')} ms; the ping gave up ${detectedAt - silentAt} ms after the cut`,
    );

    // Nothing lost: every message handled by both subscriptions, each delivery completed once.
    expect([...fastSeen.keys()].sort()).toEqual([...published].sort());
    expect([...slowSeen.keys()].sort()).toEqual([...published].sort());
    await waitFor(
      'every ack written',
      async () => (await count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries')) === 0,
    );
    expect(await count(t.pool, 'SELECT count(*) AS n FROM outbox.completed_deliveries')).toBe(
      2 * published.length,
    );
  }, 150_000);
});
