import { OutboxError } from '../errors.js';
import type { OutboxMessage, SubscribeOptions } from '../types.js';

/**
 * Where forward() sends a subscription's deliveries: a broker. A delivery counts as done only once send() has
 * resolved, that is once the broker confirmed it (RabbitMQ's publisher confirm, JetStream's PubAck); a rejection
 * is a failed attempt, retried with backoff like a handler's error, so nothing committed is lost on the way.
 */
export interface ForwardTarget {
  /** Named in logs and errors, e.g. `rabbitmq amqp://127.0.0.1:5672`. */
  readonly name: string;
  send(message: OutboxMessage): Promise<void>;
  /** Closes the broker connection; forward() calls it when the Outbox stops. */
  close(): Promise<void>;
}

/**
 * The id a broker deduplicates by (JetStream's Nats-Msg-Id, AMQP's messageId): the message id with its publish
 * time. The id alone restarts at 1 in every schema and database, so two outboxes forwarding to one stream, or a
 * schema created again, would reuse ids, and JetStream would drop a new message as the duplicate of an old one
 * (its PubAck says `duplicate`, which must count as done for a real second copy). The same message always has the
 * same forward id, so a copy sent again after a crash is still recognised.
 */
export function forwardId(message: OutboxMessage): string {
  return `${message.id}-${message.createdAt.getTime()}`;
}

/** Headers every forwarded message carries beside the message's own (trace context among them). */
export function forwardedHeaders(message: OutboxMessage): Record<string, string> {
  return {
    ...message.headers,
    'x-outbox-message-id': message.id,
    'x-outbox-topic': message.topic,
    ...(message.key === null ? {} : { 'x-outbox-key': message.key }),
  };
}

/** The message body a broker receives: the payload as JSON, as it was published. */
export function forwardedBody(message: OutboxMessage): Buffer {
  return Buffer.from(JSON.stringify(message.payload));
}

/**
 * A broker connection opened on first use and shared by every send; opened again on the next send once `drop`
 * (handed to `open`, for the connection's close events) was called or the opening failed.
 */
export function lazyConnection<T>(open: (drop: () => void) => Promise<T>) {
  let current: Promise<T> | null = null;
  return {
    get(): Promise<T> {
      if (current !== null) return current;
      const drop = () => {
        if (current === mine) current = null;
      };
      const mine: Promise<T> = open(drop).catch((error: unknown) => {
        drop();
        throw error;
      });
      current = mine;
      return mine;
    },
    /** Forgets the connection and hands it over to be closed (null when none was opened). */
    take(): Promise<T> | null {
      const taken = current;
      current = null;
      return taken;
    },
  };
}

/** Imports an optional broker library, or says which package to install. */
export async function importPeer<T>(name: string, usedBy: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (error) {
    throw new OutboxError(
      'OUTBOX_MISSING_DEPENDENCY',
      `${usedBy} needs the optional peer dependency ${name}: npm install ${name}`,
      { cause: error, value: name },
    );
  }
}

/** forward()'s options: a subscription's (lease mode; no handler, no payload schema) and its target. */
export interface ForwardOptions extends Omit<SubscribeOptions, 'mode' | 'db' | 'schema'> {
  /** The broker: rabbitmq({ ... }) or nats({ ... }). */
  to: ForwardTarget;
}

/**
 * Forwarding defaults, where subscribe's suit handlers: many publishes in flight (each handler slot holds one
 * unconfirmed publish, so the rate is the broker's, not a round trip per message) and a quick first retry.
 * batchSize is subscribe's (1,000): the claims grow with the rate the broker confirms at.
 */
export const FORWARD_DEFAULTS = { concurrency: 200, retry: { minDelayMs: 200 } } as const;

export function assertTarget(to: unknown): asserts to is ForwardTarget {
  const t = to as Partial<ForwardTarget> | null;
  if (typeof t !== 'object' || t === null || typeof t.send !== 'function' || typeof t.close !== 'function') {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'forward() needs { to: rabbitmq({ url }) or nats({ servers }) }',
      {
        value: typeof to,
      },
    );
  }
}
