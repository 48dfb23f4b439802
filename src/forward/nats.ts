import type { JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { OutboxError } from '../errors.js';
import type { OutboxMessage } from '../types.js';
import { forwardedBody, forwardedHeaders, importPeer, type ForwardTarget } from './target.js';

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
}

interface Settings {
  servers: string[];
  subject: (message: OutboxMessage) => string;
  stream: { name: string; subjects: string[] } | undefined;
  ackTimeoutMs: number;
}

interface Connected {
  connection: NatsConnection;
  js: JetStreamClient;
  headers: typeof import('@nats-io/transport-node').headers;
}

/**
 * A NATS JetStream target (@nats-io/transport-node and @nats-io/jetstream, optional peer dependencies loaded on
 * first use). Each message is published with `Nats-Msg-Id` = its message id, so JetStream drops a second copy
 * within the stream's duplicate window (a delivery sent again after a crash between PubAck and ack); a delivery is
 * done only on the PubAck. Publishes are pipelined, one per handler slot of the forwarding subscription.
 */
export function nats(options: NatsOptions): ForwardTarget {
  const settings = resolve(options);
  let connection: Promise<Connected> | null = null;
  const connect = (): Promise<Connected> => {
    connection ??= open(settings).catch((error: unknown) => {
      connection = null;
      throw error;
    });
    return connection;
  };

  return {
    name: `nats ${settings.servers.join(',')}`,
    async send(message) {
      const { js, headers } = await connect();
      const h = headers();
      for (const [name, value] of Object.entries(forwardedHeaders(message))) h.set(name, value);
      await js.publish(settings.subject(message), forwardedBody(message), {
        msgID: message.id,
        headers: h,
        timeout: settings.ackTimeoutMs,
      });
    },
    async close() {
      const pending = connection;
      connection = null;
      if (pending === null) return;
      const connected = await pending.catch(() => null);
      await connected?.connection.drain().catch(() => undefined);
    },
  };
}

async function open(
  s: Required<Omit<NatsOptions, 'stream'>> & Pick<NatsOptions, 'stream'>,
): Promise<Connected> {
  const transport = await importPeer<typeof import('@nats-io/transport-node')>(
    '@nats-io/transport-node',
    'nats()',
  );
  const jetstream = await importPeer<typeof import('@nats-io/jetstream')>('@nats-io/jetstream', 'nats()');
  // The client reconnects by itself; publishes during an outage fail (and are retried) until it is back.
  const connection = await transport.connect({ servers: s.servers, maxReconnectAttempts: -1 });
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
  };
}
