import amqp, { type ConfirmChannel } from 'amqplib';
import { jetstream } from '@nats-io/jetstream';
import { connect, headers } from '@nats-io/transport-node';
import { preciseNow } from './db.js';
import { AMQP_URL, benchPayload, EXCHANGE, FORWARD_TOPIC, NATS_URL, type BrokerName } from './brokers.js';

/**
 * The broker's own publish rate from the same client library in this process: `n` messages of the forwarded
 * shape (the same JSON body, id, topic headers and flags as pg-outbox's targets send), on a connection made before
 * the clock starts, timed from the first publish to the last confirm.
 */
export interface RawPublish {
  broker: BrokerName;
  /** 'window': at most `inFlight` unconfirmed, each publisher slot awaiting its confirm; 'all': fire all, then wait. */
  style: 'window' | 'all';
  inFlight: number;
}

/** How long a raw publish took, and its messages' mean time from publish to confirm (NaN: not per message). */
export interface RawTiming {
  elapsedMs: number;
  latencyMs: number;
}

/** `inFlight` slots, each sending the next message once its previous one is confirmed. */
async function windowed(
  n: number,
  inFlight: number,
  send: (i: number) => Promise<unknown>,
): Promise<RawTiming> {
  let next = 0;
  let latency = 0;
  const slot = async () => {
    while (next < n) {
      const sent = preciseNow();
      await send(next++);
      latency += preciseNow() - sent;
    }
  };
  const start = preciseNow();
  await Promise.all(Array.from({ length: Math.min(inFlight, n) }, slot));
  return { elapsedMs: preciseNow() - start, latencyMs: latency / n };
}

const forwardedHeaders = (id: string) => ({ 'x-outbox-message-id': id, 'x-outbox-topic': FORWARD_TOPIC });

function rabbitPublish(channel: ConfirmChannel, i: number, done: (error: unknown) => void): void {
  const id = String(i + 1);
  channel.publish(
    EXCHANGE,
    FORWARD_TOPIC,
    Buffer.from(JSON.stringify(benchPayload(i))),
    {
      messageId: id,
      type: FORWARD_TOPIC,
      contentType: 'application/json',
      timestamp: Math.floor(Date.now() / 1000),
      headers: forwardedHeaders(id),
      persistent: true,
      mandatory: true,
    },
    done,
  );
}

async function rabbitRaw(n: number, style: RawPublish['style'], inFlight: number): Promise<RawTiming> {
  const model = await amqp.connect(AMQP_URL);
  try {
    const channel = await model.createConfirmChannel();
    if (style === 'all') {
      const start = preciseNow();
      for (let i = 0; i < n; i++) rabbitPublish(channel, i, () => undefined);
      await channel.waitForConfirms();
      return { elapsedMs: preciseNow() - start, latencyMs: NaN };
    }
    return await windowed(
      n,
      inFlight,
      (i) =>
        new Promise<void>((resolve, reject) =>
          rabbitPublish(channel, i, (error) =>
            error == null ? resolve() : reject(new Error('the broker refused a message', { cause: error })),
          ),
        ),
    );
  } finally {
    await model.close();
  }
}

async function natsRaw(n: number, inFlight: number): Promise<RawTiming> {
  const connection = await connect({ servers: NATS_URL });
  try {
    const js = jetstream(connection);
    return await windowed(n, inFlight, (i) => {
      const id = String(i + 1);
      const h = headers();
      for (const [name, value] of Object.entries(forwardedHeaders(id))) h.set(name, value);
      return js.publish(FORWARD_TOPIC, Buffer.from(JSON.stringify(benchPayload(i))), {
        msgID: id,
        headers: h,
        timeout: 10_000,
      });
    });
  } finally {
    await connection.drain();
  }
}

/** Publishes `n` messages as `how` says, timed from the first publish to the last confirm. */
export function rawPublish(how: RawPublish, n: number): Promise<RawTiming> {
  if (how.broker === 'RabbitMQ') return rabbitRaw(n, how.style, how.inFlight);
  if (how.style === 'all') throw new Error('the fire-all-then-wait publish is RabbitMQ only');
  return natsRaw(n, how.inFlight);
}
