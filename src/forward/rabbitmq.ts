import type { ConfirmChannel, ChannelModel, Message } from 'amqplib';
import { OutboxError } from '../errors.js';
import type { OutboxMessage } from '../types.js';
import {
  forwardedBody,
  forwardedHeaders,
  forwardId,
  importPeer,
  lazyConnection,
  type ForwardTarget,
} from './target.js';

export interface RabbitMqOptions {
  /** The broker, e.g. `amqp://guest:guest@127.0.0.1:5672`. */
  url: string;
  /** The exchange a message is published to: a name, or one per message. @defaultValue 'pg-outbox' */
  exchange?: string | ((message: OutboxMessage) => string);
  /** The routing key of a message. @defaultValue the message's topic */
  routingKey?: (message: OutboxMessage) => string;
  /**
   * Declare the exchange (durable, of this type) when connecting; false when it exists already or comes from a
   * function. @defaultValue 'topic'
   */
  assertExchange?: 'topic' | 'direct' | 'fanout' | 'headers' | false;
  /** Persistent messages (delivery mode 2): they survive a broker restart in durable queues. @defaultValue true */
  persistent?: boolean;
  /**
   * The AMQP messageId (consumers deduplicate by it). @defaultValue `<message id>-<publish time in ms>`, unique
   * across schemas and databases (see forwardId); the plain id is in the header x-outbox-message-id
   */
  messageId?: (message: OutboxMessage) => string;
}

interface Connected {
  model: ChannelModel;
  channel: ConfirmChannel;
  /** Message ids the broker returned as unroutable; their confirm follows the return. */
  returned: Map<string, string>;
}

/**
 * A RabbitMQ target (amqplib, an optional peer dependency, loaded on first use): one connection with one confirm
 * channel. Every publish is `mandatory`, so a message no queue is bound for comes back (basic.return, which the
 * broker sends before its ack) and counts as a failure instead of vanishing; a delivery is done only on the
 * broker's ack. Publishes are pipelined: each handler slot of the forwarding subscription has one in flight. A
 * lost connection or channel fails the publishes in flight (they are retried) and the next one connects again.
 */
export function rabbitmq(options: RabbitMqOptions): ForwardTarget {
  const settings = resolve(options);
  const connection = lazyConnection((drop) => open(settings, drop));
  return {
    name: `rabbitmq ${redact(settings.url)}`,
    async send(message) {
      await publish(await connection.get(), settings, message);
    },
    async close() {
      const connected = await connection.take()?.catch(() => null);
      await connected?.model.close().catch(() => undefined);
    },
  };
}

/** Connects, opens the confirm channel and declares the exchange; `drop` forgets them when either closes. */
async function open(s: Required<RabbitMqOptions>, drop: () => void): Promise<Connected> {
  const amqp = await importPeer<typeof import('amqplib')>('amqplib', 'rabbitmq()');
  const model = await amqp.connect(s.url);
  model.on('close', drop);
  model.on('error', drop);
  const channel = await model.createConfirmChannel();
  const connected: Connected = { model, channel, returned: new Map() };
  // The broker closes a channel on a channel error (a missing exchange: 404): drop the connection with it, so the
  // next send opens both again instead of publishing on a dead channel.
  channel.on('close', () => {
    drop();
    model.close().catch(() => undefined);
  });
  channel.on('error', drop);
  channel.on('return', (returned: Message) => {
    const id = String(returned.properties.messageId);
    const { exchange, routingKey } = returned.fields;
    connected.returned.set(id, `no queue is bound to exchange "${exchange}" for routing key "${routingKey}"`);
  });
  if (s.assertExchange !== false && typeof s.exchange === 'string') {
    await channel.assertExchange(s.exchange, s.assertExchange, { durable: true });
  }
  return connected;
}

function publish(connected: Connected, s: Required<RabbitMqOptions>, message: OutboxMessage): Promise<void> {
  const exchange = typeof s.exchange === 'function' ? s.exchange(message) : s.exchange;
  const routingKey = s.routingKey(message);
  const id = s.messageId(message);
  return new Promise((resolvePublish, reject) => {
    const confirmed = (error: unknown) => {
      const unroutable = connected.returned.get(id);
      connected.returned.delete(id);
      if (error !== null && error !== undefined)
        return reject(asError(error, 'the broker refused the message'));
      if (unroutable !== undefined) return reject(new UnroutableError(unroutable));
      resolvePublish();
    };
    try {
      connected.channel.publish(
        exchange,
        routingKey,
        forwardedBody(message),
        {
          messageId: id,
          type: message.topic,
          contentType: 'application/json',
          timestamp: Math.floor(message.createdAt.getTime() / 1000),
          headers: forwardedHeaders(message),
          persistent: s.persistent,
          mandatory: true,
        },
        confirmed,
      );
    } catch (error) {
      reject(asError(error, 'publish failed'));
    }
  });
}

/** A message no queue took: retried like any failure (a binding may appear), dead-lettered at maxAttempts. */
export class UnroutableError extends Error {
  override readonly name = 'UnroutableError';
}

function resolve(options: RabbitMqOptions): Required<RabbitMqOptions> {
  if (typeof options !== 'object' || options === null || typeof options.url !== 'string') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'rabbitmq() needs { url: "amqp://..." }', {
      value: typeof options,
    });
  }
  if (!/^amqps?:\/\//.test(options.url)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'rabbitmq() url must start with amqp:// or amqps://', {
      value: redact(options.url),
    });
  }
  return {
    url: options.url,
    exchange: options.exchange ?? 'pg-outbox',
    routingKey: options.routingKey ?? ((m) => m.topic),
    assertExchange: options.assertExchange ?? 'topic',
    persistent: options.persistent ?? true,
    messageId: options.messageId ?? forwardId,
  };
}

function asError(error: unknown, fallback: string): Error {
  return error instanceof Error ? error : new Error(fallback, { cause: error });
}

/** A URL without its password, for logs. */
function redact(url: string): string {
  return url.replace(/\/\/([^:/@]+):[^@/]*@/, '//$1:***@');
}
