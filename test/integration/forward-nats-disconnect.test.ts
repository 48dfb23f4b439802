import { describe, expect, it } from 'vitest';
import { nats, type OutboxMessage } from '../../src/index.js';
import { natsServerMissing, startPrivateNatsServer } from '../helpers/nats-server.js';

/*
 * The nats() target on a private nats-server, driven directly (no outbox): the server is SIGSTOPped so that the
 * publishes sent to it get no PubAck, then SIGKILLed, which closes the client's TCP connection. The ack timeout is
 * 10 minutes, far beyond the test's timeout, so a publish that waited for it would fail the test.
 */
const ACK_TIMEOUT_MS = 600_000;
const LOST = /^nats connection to 127\.0\.0\.1:\d+ lost before the PubAck; the delivery is retried$/;

function message(n: number): OutboxMessage {
  return {
    id: String(n),
    deliveryId: String(n),
    subscription: 'to-nats',
    topic: 'disconnect.orders',
    key: null,
    payload: { n },
    headers: {},
    attempt: 1,
    createdAt: new Date(),
    deliverAt: null,
  };
}

/** The send's error, or null when it resolved. */
const outcome = (send: Promise<void>) =>
  send.then(
    () => null,
    (error: unknown) => error,
  );

describe.skipIf(natsServerMissing('forwarding to NATS across a lost connection'))(
  'forward to NATS JetStream when the connection is lost',
  () => {
    it('fails the publishes in flight at once when the connection drops, and publishes again once the client reconnects', async () => {
      const server = await startPrivateNatsServer();
      const to = nats({
        servers: server.url,
        stream: { name: 'DISCONNECT', subjects: ['disconnect.>'] },
        ackTimeoutMs: ACK_TIMEOUT_MS,
      });
      try {
        await to.send(message(1)); // connected, the stream created

        await server.signal('SIGSTOP');
        const inFlight = [2, 3, 4].map((n) => outcome(to.send(message(n))));
        await server.kill('SIGKILL');
        const errors = await Promise.all(inFlight);
        expect(errors.map((e) => (e instanceof Error ? e.message : e))).toEqual([
          expect.stringMatching(LOST),
          expect.stringMatching(LOST),
          expect.stringMatching(LOST),
        ]);

        // Sent while the client reconnects: held until the connection is back, then acked on the restarted server.
        const duringOutage = outcome(to.send(message(5)));
        await server.start();
        expect(await duringOutage).toBeNull();
        expect(await outcome(to.send(message(6)))).toBeNull();
      } finally {
        await to.close();
        await server.remove();
      }
    });
  },
);
