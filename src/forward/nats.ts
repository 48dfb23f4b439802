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
  /**
   * How long to wait for a PubAck before the attempt fails (and is retried). An attempt made while the client
   * reconnects first waits as long for the connection. @defaultValue 10_000
   */
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
  link: Link;
}

/**
 * A NATS JetStream target (@nats-io/transport-node and @nats-io/jetstream, optional peer dependencies loaded on
 * first use). Each message is published with `Nats-Msg-Id` = its forward id, so JetStream drops a second copy
 * within the stream's duplicate window (a delivery sent again after a crash between PubAck and ack); a delivery is
 * done only on the PubAck. Publishes are pipelined, one per handler slot of the forwarding subscription; those in
 * flight when the connection drops fail at once (see follow).
 */
export function nats(options: NatsOptions): ForwardTarget {
  const settings = resolve(options);
  // The client reconnects by itself, so the connection is opened once (again only if opening failed).
  const connection = lazyConnection(() => open(settings));
  return {
    name: `nats ${settings.servers.join(',')}`,
    async send(message) {
      const { js, headers, link } = await connection.get();
      const h = headers();
      for (const [name, value] of Object.entries(forwardedHeaders(message))) h.set(name, value);
      await link.publish(settings.ackTimeoutMs, () =>
        js.publish(settings.subject(message), forwardedBody(message), {
          msgID: settings.messageId(message),
          headers: h,
          timeout: settings.ackTimeoutMs,
        }),
      );
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
  // The client reconnects by itself; follow() fails the publishes in flight when it loses the connection and holds
  // new ones until it is back.
  // Pings every PING_INTERVAL_MS notice a connection that went silent (a NAT that forgot it) within about three
  // intervals; the client's default of two minutes would leave publishes failing on it for several minutes.
  const connection = await transport.connect({
    servers: s.servers,
    maxReconnectAttempts: -1,
    pingInterval: PING_INTERVAL_MS,
    maxPingOut: 2,
    // Without it every request makes two Errors up front, for their stack traces: a quarter of the forwarder's
    // CPU at 10,000 publishes a second (measured), for stacks that would only point into this file.
    noAsyncTraces: true,
  });
  if (s.stream !== undefined) {
    const manager = await jetstream.jetstreamManager(connection);
    const exists = await manager.streams.info(s.stream.name).then(
      () => true,
      () => false,
    );
    if (!exists) await manager.streams.add({ name: s.stream.name, subjects: s.stream.subjects });
  }
  return {
    connection,
    js: jetstream.jetstream(connection),
    headers: transport.headers,
    link: follow(connection),
  };
}

interface Link {
  /** Runs a publish once the client is connected (waiting at most waitMs); fails it when the connection drops. */
  publish<T>(waitMs: number, run: () => Promise<T>): Promise<T>;
}

/**
 * Publishes on one client connection, following its status events with one watcher. A publish in flight when the
 * connection drops fails at once rather than at its ack timeout: its PubAck cannot come on the next connection,
 * and the client discards what it buffered during the outage (each dial resets its outbound buffer), so a publish
 * made then waits for the reconnect instead. Failing early loses nothing: the delivery is retried, and JetStream
 * drops a second copy of a message that did land by its Nats-Msg-Id.
 */
function follow(connection: NatsConnection): Link {
  // Reject functions, not a shared "lost" promise raced by each publish: reactions on a pending promise are kept
  // until it settles, which would grow for as long as the connection lives.
  const inFlight = new Set<(error: Error) => void>();
  let reconnected: Settleable | null = null;
  let server = connection.getServer();

  const watch = async () => {
    try {
      for await (const status of connection.status()) {
        if (status.type === 'disconnect') {
          server = status.server;
          reconnected ??= settleable();
          const lost = new Error(
            `nats connection to ${server} lost before the PubAck; the delivery is retried`,
          );
          for (const reject of inFlight) reject(lost);
          inFlight.clear();
        } else if (status.type === 'reconnect') {
          reconnected?.resolve();
          reconnected = null;
        }
      }
    } finally {
      // The status iterator ends when the connection is closed: it will not come back.
      reconnected?.reject(new Error(`nats connection to ${server} closed; the delivery is retried`));
    }
  };
  watch().catch(() => undefined);

  return {
    async publish(waitMs, run) {
      while (reconnected !== null) {
        await within(
          reconnected.promise,
          waitMs,
          `nats connection to ${server} not back within ${waitMs} ms`,
        );
      }
      let fail!: (error: Error) => void;
      const lost = new Promise<never>((_, reject) => {
        fail = reject;
      });
      inFlight.add(fail);
      try {
        return await Promise.race([run(), lost]);
      } finally {
        inFlight.delete(fail);
      }
    },
  };
}

interface Settleable {
  promise: Promise<void>;
  resolve: () => void;
  reject: (error: Error) => void;
}

function settleable(): Settleable {
  let resolve!: () => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Rejected on close, when maybe no publish is waiting.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** `promise`, or a rejection saying `what; the delivery is retried` after ms. */
async function within(promise: Promise<void>, ms: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}; the delivery is retried`)), ms);
  });
  try {
    await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
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
