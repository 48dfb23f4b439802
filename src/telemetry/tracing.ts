import { createRequire } from 'node:module';
import type * as Otel from '@opentelemetry/api';
import { OutboxError } from '../errors.js';
import type { OutboxMessage } from '../types.js';
import type { PublishScope, TelemetrySink } from './hub.js';

/** `messaging.system` of every span: no well-known value fits, so the product's name. */
const SYSTEM = 'pg_outbox';
const INSTRUMENTATION = 'pg-outbox';

export interface TracingOptions {
  /**
   * true: trace, and fail at createOutbox when @opentelemetry/api is not installed; false: never trace.
   * @defaultValue 'auto': trace when @opentelemetry/api is installed (without an SDK registered its spans are
   * no-ops)
   */
  enabled?: boolean | 'auto';
  /**
   * How a handler's `process` span refers to the publisher's span: false makes it the parent (one trace from the
   * publish to every attempt of every subscription); true starts a trace of its own with a link to it (the
   * OpenTelemetry messaging conventions' choice for work that runs long after it was sent).
   * @defaultValue false
   */
  link?: boolean;
  /**
   * Where the tracer comes from.
   * @defaultValue the global provider (`trace.getTracerProvider()`), as an SDK registers it
   */
  tracerProvider?: { getTracer(name: string, version?: string): unknown };
}

type Api = typeof Otel;

/** @opentelemetry/api, loaded on demand (an optional peer dependency); null when it is not installed. */
function loadApi(): Api | null {
  try {
    return createRequire(import.meta.url)('@opentelemetry/api') as Api;
  } catch {
    return null;
  }
}

/**
 * Whether an SDK has registered a global tracer provider. Until one does, the API's provider hands out no-op spans:
 * then pg-outbox makes none, and a publish or a handler call costs a property read. Asked on every call, so an SDK
 * registered after createOutbox() is used from then on.
 */
function sdkRegistered(api: Api): boolean {
  const global = api.trace.getTracerProvider() as { getDelegateTracer?: (name: string) => unknown };
  return (
    typeof global.getDelegateTracer !== 'function' || global.getDelegateTracer(INSTRUMENTATION) !== undefined
  );
}

/** Reads headers that a message carries for the propagator (W3C traceparent / tracestate by default). */
const getter: Otel.TextMapGetter<Record<string, string>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key],
};

function failed(api: Api, span: Otel.Span, error: unknown): void {
  span.recordException(error instanceof Error ? error : String(error));
  span.setStatus({
    code: api.SpanStatusCode.ERROR,
    message: error instanceof Error ? error.message : undefined,
  });
  span.setAttribute('error.type', error instanceof Error ? error.name : 'Error');
}

/**
 * `headers` with every field the propagator owns (W3C traceparent, tracestate, baggage by default) injected from
 * `active`: a tracestate of the publisher's span must not travel with another span's traceparent. In link mode
 * the active context holds none of the message's baggage, so the message's own goes on.
 */
function withContext(
  api: Api,
  active: Otel.Context,
  headers: Record<string, string>,
): Record<string, string> {
  const baggage =
    api.propagation.getBaggage(active) ??
    api.propagation.getBaggage(api.propagation.extract(api.ROOT_CONTEXT, headers, getter));
  const injected: Record<string, string> = {};
  api.propagation.inject(
    baggage === undefined ? active : api.propagation.setBaggage(active, baggage),
    injected,
  );
  const owned = new Set(api.propagation.fields());
  const own = Object.entries(headers).filter(([name]) => !owned.has(name));
  return { ...Object.fromEntries(own), ...injected };
}

/**
 * The spans of the OpenTelemetry messaging conventions: `send <topic>` (PRODUCER) around each publish, whose
 * context goes into the message's headers, and `process <topic>` (CONSUMER) around each handler call, with the
 * publisher's context as its parent or link. The headers live on the message row, so every attempt, a dead
 * letter's replay and a replay from a point in time all trace back to the same publish. A message that forward()
 * sends to a broker carries the `process` span's context instead, so the broker's consumers continue the trace.
 */
function tracingSink(api: Api, tracer: Otel.Tracer, link: boolean, live: () => boolean): TelemetrySink {
  return {
    publishing(topics, count): PublishScope | undefined {
      if (!live()) return undefined;
      const topic = topics.length === 1 ? topics[0] : undefined;
      const span = tracer.startSpan(topic === undefined ? 'send' : `send ${topic}`, {
        kind: api.SpanKind.PRODUCER,
        attributes: {
          'messaging.system': SYSTEM,
          'messaging.operation.type': 'send',
          'messaging.operation.name': 'send',
          ...(topic === undefined ? {} : { 'messaging.destination.name': topic }),
          ...(count === 1 ? {} : { 'messaging.batch.message_count': count }),
        },
      });
      const headers: Record<string, string> = {};
      api.propagation.inject(api.trace.setSpan(api.context.active(), span), headers);
      return {
        headers: Object.keys(headers).length === 0 ? undefined : headers,
        end(error, ids) {
          if (error !== undefined) failed(api, span, error);
          else if (ids?.length === 1 && ids[0] !== undefined)
            span.setAttribute('messaging.message.id', ids[0]);
          span.end();
        },
      };
    },
    handle<T>(message: OutboxMessage, run: () => Promise<T>): Promise<T> {
      return live() ? traced(message, run) : run();
    },
    forwarding(message, target) {
      if (!live()) return message;
      // Inside the handler call the active span is its `process` span: the broker's consumers become its children.
      const active = api.context.active();
      const span = api.trace.getSpan(active);
      if (span === undefined || !api.trace.isSpanContextValid(span.spanContext())) return message;
      span.setAttribute('pg_outbox.forward.target', target);
      return { ...message, headers: withContext(api, active, message.headers) };
    },
  };

  function traced<T>(message: OutboxMessage, run: () => Promise<T>): Promise<T> {
    const sent = api.propagation.extract(api.ROOT_CONTEXT, message.headers, getter);
    const sentSpan = api.trace.getSpanContext(sent);
    const options: Otel.SpanOptions = {
      kind: api.SpanKind.CONSUMER,
      attributes: {
        'messaging.system': SYSTEM,
        'messaging.operation.type': 'process',
        'messaging.operation.name': 'process',
        'messaging.destination.name': message.topic,
        'messaging.consumer.group.name': message.subscription,
        'messaging.message.id': message.id,
        'pg_outbox.delivery.id': message.deliveryId,
        'pg_outbox.delivery.attempt': message.attempt,
      },
      links: link && sentSpan !== undefined ? [{ context: sentSpan }] : undefined,
    };
    const parent = link || sentSpan === undefined ? api.context.active() : sent;
    return tracer.startActiveSpan(`process ${message.topic}`, options, parent, async (span) => {
      try {
        return await run();
      } catch (error) {
        failed(api, span, error);
        throw error;
      } finally {
        span.end();
      }
    });
  }
}

/** The tracing sink that the options ask for, or null (tracing off, or 'auto' without @opentelemetry/api). */
export function createTracing(
  options: Required<Pick<TracingOptions, 'enabled' | 'link'>> & TracingOptions,
): TelemetrySink | null {
  if (options.enabled === false) return null;
  const api = loadApi();
  if (api === null) {
    if (options.enabled === 'auto') return null;
    throw new OutboxError(
      'OUTBOX_MISSING_DEPENDENCY',
      'tracing needs the @opentelemetry/api package: npm install @opentelemetry/api',
    );
  }
  const own = options.tracerProvider as Otel.TracerProvider | undefined;
  const tracer = (own ?? api.trace.getTracerProvider()).getTracer(INSTRUMENTATION);
  const live = own === undefined ? () => sdkRegistered(api) : () => true;
  return tracingSink(api, tracer, options.link, live);
}
