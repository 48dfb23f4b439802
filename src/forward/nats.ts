import type { JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
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

export interface NatsOptions {
  /** The NATS servers, e.g. `nats://127.0.0.1:4222` or a list of them. */
  servers: string | string[];
  /** The subject a message is published to. @defaultValue the message's topic */
  subject?: (message: OutboxMessage) => string;
  /**
   * A stream to create when it does not exist yet, capturing these subjects (JetStream refuses a publish that no
   * stream captures). @defaultValue none: the stream must exist
   */
  stream?: { name: string; subjects: string[] };
  /** How long to wait for a PubAck before the attempt fails (and is retried). @defaultValue 10_000 */
  ackTimeoutMs?: number;
  /**
   * The Nats-Msg-Id JetStream deduplicates by. @defaultValue `<message id>-<publish time in ms>`, unique across
   * schemas and databases (see forwardId); the plain id is in the header x-outbox-message-id
   */
  messageId?: (message: OutboxMessage) => string;
}

const PING_INTERVAL_MS = 10_000;

interface Settings {
  servers: string[];
  subject: (message: OutboxMessage) => string;
  stream: { name: string; subjects: string[] } | undefined;
  ackTimeoutMs: number;
  messageId: (message: OutboxMessage) => string;
}

interface Connected {
  connection: NatsConnection;
  js: JetStreamClient;
  headers: typeof import('@nats-io/transport-node').headers;
}

/**
 * A NATS JetStream target (@nats-io/transport-node and @nats-io/jetstream, optional peer dependencies loaded on
 * first use). Each message is published with `Nats-Msg-Id` = its forward id, so JetStream drops a second copy
 * within the stream's duplicate window (a delivery sent again after a crash between PubAck and ack); a delivery is
 * done only on the PubAck. Publishes are pipelined, one per handler slot of the forwarding subscription.
 */
export function nats(options: NatsOptions): ForwardTarget {
  const settings = resolve(options);
  // The client reconnects by itself, so the connection is opened once (again only if opening failed).
  const connection = lazyConnection(() => open(settings));
  return {
    name: `nats ${settings.servers.join(',')}`,
    async send(message) {
      const { js, headers } = await connection.get();
      const h = headers();
      for (const [name, value] of Object.entries(forwardedHeaders(message))) h.set(name, value);
      await js.publish(settings.subject(message), forwardedBody(message), {
        msgID: settings.messageId(message),
        headers: h,
        timeout: settings.ackTimeoutMs,
      });
    },
    async close() {
      const connected = await connection.take()?.catch(() => null);
      await connected?.connection.drain().catch(() => undefined);
    },
  };
}

async function open(s: Settings): Promise<Connected> {
  const transport = await importPeer<typeof import('@nats-io/transport-node')>(
    '@nats-io/transport-node',
    'nats()',
  );
  const jetstream = await importPeer<typeof import('@nats-io/jetstream')>('@nats-io/jetstream', 'nats()');
  // The client reconnects by itself; publishes during an outage fail (and are retried) until it is back.
  // Pings every PING_INTERVAL_MS notice a connection that went silent (a NAT that forgot it) within about three
  // intervals; the client's default of two minutes would leave publishes failing on it for several minutes.
  const connection = await transport.connect({
    servers: s.servers,
    maxReconnectAttempts: -1,
    pingInterval: PING_INTERVAL_MS,
    maxPingOut: 2,
  });
  if (s.stream !== undefined) {
    const manager = await jetstream.jetstreamManager(connection);
    const exists = await manager.streams.info(s.stream.name).then(
      () => true,
      () => false,
    );
    if (!exists) await manager.streams.add({ name: s.stream.name, subjects: s.stream.subjects });
  }
  return { connection, js: jetstream.jetstream(connection), headers: transport.headers };
}

function resolve(options: NatsOptions): Settings {
  const servers = typeof options?.servers === 'string' ? [options.servers] : options?.servers;
  if (!Array.isArray(servers) || servers.length === 0 || servers.some((s) => typeof s !== 'string')) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'nats() needs { servers: "nats://host:4222" }', {
      value: typeof options,
    });
  }
  return {
    servers,
    subject: options.subject ?? ((m) => m.topic),
    stream: options.stream,
    ackTimeoutMs: options.ackTimeoutMs ?? 10_000,
    messageId: options.messageId ?? forwardId,
  };
}
