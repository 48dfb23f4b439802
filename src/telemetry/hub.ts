import type { OutboxMessage } from '../types.js';

/** How a handled delivery ended, once its outcome is recorded (a fenced-out write is no outcome). */
export type SettledOutcome = 'done' | 'retry' | 'dead';

/** One publish or publishMany call as an observer sees it (a tracing span). */
export interface PublishScope {
  /** Headers every message of the call stores (trace context); the caller's own headers win. */
  headers: Record<string, string> | undefined;
  /** The call ended: with the error it threw, or with the ids it wrote. */
  end(error?: unknown, ids?: readonly string[]): void;
}

/**
 * What one observer (metrics, tracing) hears from the producer, the relay and the consumers. Every method is
 * optional; none may throw into the caller (the hub catches), and none may be slow: they run on the hot paths.
 */
export interface TelemetrySink {
  /** A publish or publishMany call starts (after its input was checked); undefined: nothing to watch. */
  publishing?(topics: readonly string[], count: number): PublishScope | undefined;
  /** Messages written by publish or publishMany (duplicates of a dedupKey excluded), before the caller commits. */
  published?(topic: string, count: number): void;
  /** Messages fanned out by a committed relay batch, by topic. */
  relayed?(byTopic: Readonly<Record<string, number>>): void;
  /**
   * One handler call ended, however it ended; the times are the hub's clock() (milliseconds since the epoch, with
   * fractions). A hook, not a wrapper: timing a call this way adds no promise to the delivery.
   */
  ran?(message: OutboxMessage, startedAt: number, endedAt: number): void;
  /** Wraps one handler call: runs `run` and returns what it returns (or throws what it throws). */
  handle?<T>(message: OutboxMessage, run: () => Promise<T>): Promise<T>;
  /** A delivery's outcome was recorded: acked, scheduled for a retry, or dead-lettered. */
  settled?(subscription: string, topic: string, outcome: SettledOutcome): void;
  /**
   * forward() is about to send a message to a broker (`target`: its name), inside the handler call: returns the
   * message to send (tracing puts the running span's context into its headers), or the message itself.
   */
  forwarding?(message: OutboxMessage, target: string): OutboxMessage;
}

type Wrap = NonNullable<TelemetrySink['handle']>;

/**
 * The observers of one Outbox. With none attached every call is a length check, so an Outbox without metrics or
 * tracing pays nothing measurable for them.
 */
export class TelemetryHub {
  private sinks: TelemetrySink[] = [];
  /** The sinks' handle(), bound once per change of the sinks, not per delivery. */
  private wraps: Wrap[] = [];
  private timed = false;

  /** Whether any observer is attached: callers skip preparing what nobody hears. */
  get active(): boolean {
    return this.sinks.length > 0;
  }

  add(sink: TelemetrySink): () => void {
    this.set([...this.sinks, sink]);
    return () => this.set(this.sinks.filter((s) => s !== sink));
  }

  private set(sinks: TelemetrySink[]): void {
    this.sinks = sinks;
    this.wraps = sinks.flatMap<Wrap>((s) => (s.handle === undefined ? [] : [s.handle.bind(s)]));
    this.timed = sinks.some((s) => s.ran !== undefined);
  }

  /** The scopes of the observers that watch publishing, as one; undefined when none does. */
  publishing(topics: readonly string[], count: number): PublishScope | undefined {
    if (this.sinks.length === 0) return undefined;
    const scopes = this.sinks.flatMap((s) => {
      const scope = s.publishing === undefined ? undefined : guard(() => s.publishing?.(topics, count));
      return scope === undefined ? [] : [scope];
    });
    if (scopes.length === 0) return undefined;
    const headers = scopes.reduce<Record<string, string> | undefined>(
      (all, scope) => (scope.headers === undefined ? all : { ...all, ...scope.headers }),
      undefined,
    );
    return {
      headers,
      end: (error, ids) => scopes.forEach((scope) => guard(() => scope.end(error, ids))),
    };
  }

  published(topic: string, count: number): void {
    for (const s of this.sinks) guard(() => s.published?.(topic, count));
  }

  relayed(byTopic: Readonly<Record<string, number>>): void {
    for (const s of this.sinks) guard(() => s.relayed?.(byTopic));
  }

  handle<T>(message: OutboxMessage, run: () => Promise<T>): Promise<T> {
    const wraps = this.wraps;
    if (wraps.length === 0) return run();
    if (wraps.length === 1) return (wraps[0] as Wrap)(message, run);
    // The first sink's wrapper is the outermost (a tracing span then also covers the metrics' timing).
    return wraps.reduceRight<() => Promise<T>>((inner, wrap) => () => wrap(message, inner), run)();
  }

  /** Now, for ran(): wall-clock milliseconds at the monotonic clock's resolution; 0 when no sink times calls. */
  clock(): number {
    return this.timed ? performance.timeOrigin + performance.now() : 0;
  }

  /** A handler call that began at `startedAt` (clock()) has ended. */
  ran(message: OutboxMessage, startedAt: number): void {
    if (!this.timed) return;
    const endedAt = this.clock();
    for (const s of this.sinks) guard(() => s.ran?.(message, startedAt, endedAt));
  }

  settled(subscription: string, topic: string, outcome: SettledOutcome): void {
    for (const s of this.sinks) guard(() => s.settled?.(subscription, topic, outcome));
  }

  /** The message forward() sends to the broker `target`: the message itself unless an observer adds headers. */
  forwarding(message: OutboxMessage, target: string): OutboxMessage {
    let sent = message;
    for (const s of this.sinks) sent = guard(() => s.forwarding?.(sent, target)) ?? sent;
    return sent;
  }
}

/** An observer's bug must never fail a publish, a relay batch or a delivery. */
function guard<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}
