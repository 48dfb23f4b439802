import type { ConfirmChannel, ChannelModel, Message } from 'amqplib';
import { OutboxError } from '../errors.js';
import type { OutboxMessage } from '../types.js';
import { forwardedBody, forwardedHeaders, importPeer, type ForwardTarget } from './target.js';

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
 * lost connection fails the publishes in flight (they are retried) and the next publish connects again.
 */
export function rabbitmq(options: RabbitMqOptions): ForwardTarget {
  const settings = resolve(options);
  let connection: Promise<Connected> | null = null;

  const connect = (): Promise<Connected> => {
    connection ??= open(settings).catch((error: unknown) => {
      connection = null;
      throw error;
    });
    return connection;
  };
  const forget = (which: Promise<Connected>) => {
    if (connection === which) connection = null;
  };

  return {
    name: `rabbitmq ${redact(settings.url)}`,
    async send(message) {
      const pending = connect();
      const connected = await pending;
      try {
        await publish(connected, settings, message);
      } catch (error) {
        if (isClosed(error)) forget(pending);
        throw error;
      }
    },
    async close() {
      const pending = connection;
      connection = null;
      if (pending === null) return;
      const { model } = await pending.catch(() => ({ model: null }));
      await model?.close().catch(() => undefined);
    },
  };

  async function open(s: Required<RabbitMqOptions>): Promise<Connected> {
    const amqp = await importPeer<typeof import('amqplib')>('amqplib', 'rabbitmq()');
    const model = await amqp.connect(s.url);
    const channel = await model.createConfirmChannel();
    const connected: Connected = { model, channel, returned: new Map() };
    // Read after the awaits above: by now `connection` is the promise this call is settling.
    const self = connection;
    const drop = () => {
      if (self !== null) forget(self);
    };
    model.on('close', drop);
    model.on('error', drop);
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
      connected.returned.set(
        id,
        `no queue is bound to exchange "${exchange}" for routing key "${routingKey}"`,
      );
    });
    if (s.assertExchange !== false && typeof s.exchange === 'string') {
      await channel.assertExchange(s.exchange, s.assertExchange, { durable: true });
    }
    return connected;
  }
}

function publish(connected: Connected, s: Required<RabbitMqOptions>, message: OutboxMessage): Promise<void> {
  const exchange = typeof s.exchange === 'function' ? s.exchange(message) : s.exchange;
  const routingKey = s.routingKey(message);
  return new Promise((resolvePublish, reject) => {
    const confirmed = (error: unknown) => {
      const unroutable = connected.returned.get(message.id);
      connected.returned.delete(message.id);
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
          messageId: message.id,
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
  };
}

function isClosed(error: unknown): boolean {
  return error instanceof Error && /closed|ECONNRESET|EPIPE/i.test(error.message);
}

function asError(error: unknown, fallback: string): Error {
  return error instanceof Error ? error : new Error(fallback, { cause: error });
}

/** A URL without its password, for logs. */
function redact(url: string): string {
  return url.replace(/\/\/([^:/@]+):[^@/]*@/, '//$1:***@');
}
