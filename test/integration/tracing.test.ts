import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isOutboxError } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// One trace from a publishing span in one process to the handler's spans in another, across a retry, a dead
// letter and its replay; and the link mode, which starts a trace of its own.

const run = promisify(execFile);
const FIXTURE = 'test/integration/fixtures/traced-publisher.fixture.ts';

interface PublishedSpan {
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  attributes: Record<string, unknown>;
}

/** Publishes in a child process inside its `checkout` span; returns the ids and the child's finished spans. */
async function publishElsewhere(url: string, topic: string, count: number, noSdk = false) {
  const args = ['--import', 'tsx', FIXTURE, url, topic, String(count), ...(noSdk ? ['--no-sdk'] : [])];
  const { stdout } = await run(process.execPath, args, { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { ids: string[]; spans: PublishedSpan[] };
}

describe('tracing', () => {
  let t: OutboxTestContext;
  const exporter = new InMemorySpanExporter();
  const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const fast = { retry: { minDelayMs: 0, maxDelayMs: 0 }, pollIntervalMs: 20 };

  beforeAll(async () => {
    provider.register();
    t = await setupOutboxTest();
  });
  afterAll(async () => {
    await t.close();
    await provider.shutdown();
  });

  const processSpans = (subscription: string, messageId: string) =>
    exporter
      .getFinishedSpans()
      .filter(
        (s) =>
          s.attributes['messaging.consumer.group.name'] === subscription &&
          s.attributes['messaging.message.id'] === messageId,
      )
      .sort(
        (a, b) =>
          Number(a.attributes['pg_outbox.delivery.attempt']) -
          Number(b.attributes['pg_outbox.delivery.attempt']),
      );

  it('continues the publisher’s trace in the handler’s process spans, across a retry, a dead letter and a replay', async () => {
    const o = t.outbox({ relay: { pollIntervalMs: 5 } });
    const linked = t.outbox({ relay: { enabled: false }, tracing: { link: true } });
    await o.declareSubscription('traced', { topics: ['trace.order'] });
    await o.declareSubscription('traced-dead', { topics: ['trace.order'] });
    await o.declareSubscription('traced-linked', { topics: ['trace.order'] });
    const { ids, spans } = await publishElsewhere(t.db.url, 'trace.order', 2);
    expect(ids).toHaveLength(4);

    // The publishing process: checkout → send trace.order (PRODUCER), one per publish call.
    const checkout = spans.find((s) => s.name === 'checkout');
    const sends = spans.filter((s) => s.name === 'send trace.order');
    expect(sends).toHaveLength(3);
    for (const send of sends) {
      expect(send.parentSpanId).toBe(checkout?.spanId);
      expect(send.traceId).toBe(checkout?.traceId);
      expect(send.kind).toBe(SpanKind.PRODUCER);
      expect(send.attributes).toMatchObject({
        'messaging.system': 'pg_outbox',
        'messaging.operation.type': 'send',
        'messaging.destination.name': 'trace.order',
      });
    }
    expect(sends[0]?.attributes['messaging.message.id']).toBe(ids[0]);
    expect(sends[2]?.attributes['messaging.batch.message_count']).toBe(2);
    const sendOf = (id: string) => sends[Math.min(ids.indexOf(id), 2)];

    const first = ids[0] ?? '';
    const attempts = new Map<string, number>();
    o.subscribe('traced', { topics: ['trace.order'], ...fast }, (message) => {
      const n = (attempts.get(message.id) ?? 0) + 1;
      attempts.set(message.id, n);
      if (message.id === first && n === 1) throw new Error('first attempt fails');
    });
    let replayed = false;
    o.subscribe('traced-dead', { topics: ['trace.order'], maxAttempts: 1, ...fast }, (message) => {
      if (message.id === first && !replayed) throw new Error('dies once');
    });
    linked.subscribe('traced-linked', { topics: ['trace.order'], mode: 'transactional', ...fast }, () => {});
    await o.start();
    await linked.start();

    await waitFor(
      'the first message dead for traced-dead',
      async () => (await o.deadLetters('traced-dead')).length === 1,
    );
    replayed = true;
    expect((await o.replay('traced-dead')).replayed).toBe(1);
    await waitFor('every delivery done', async () => {
      const { rows } = await t.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM outbox.audit_deliveries WHERE status = 'done'`,
      );
      return Number(rows[0]?.n) === 12;
    });
    await o.stop();
    await linked.stop();

    // Retry: two process spans, both children of the send span, in its trace; the failed one says why.
    const retried = processSpans('traced', first);
    expect(retried).toHaveLength(2);
    const send = sendOf(first);
    for (const span of retried) {
      expect(span.spanContext().traceId).toBe(send?.traceId);
      expect(span.parentSpanContext?.spanId).toBe(send?.spanId);
      expect(span.kind).toBe(SpanKind.CONSUMER);
      expect(span.name).toBe('process trace.order');
      expect(span.attributes).toMatchObject({
        'messaging.system': 'pg_outbox',
        'messaging.operation.type': 'process',
        'messaging.destination.name': 'trace.order',
        'messaging.consumer.group.name': 'traced',
        'messaging.message.id': first,
      });
    }
    expect(retried[0]?.status.code).toBe(SpanStatusCode.ERROR);
    expect(retried[0]?.events.some((e) => e.name === 'exception')).toBe(true);
    expect(retried[1]?.status.code).not.toBe(SpanStatusCode.ERROR);

    // Dead letter, then its replay: still the same trace.
    const dead = processSpans('traced-dead', first);
    expect(dead).toHaveLength(2);
    expect(dead.map((s) => s.spanContext().traceId)).toEqual([send?.traceId, send?.traceId]);
    expect(dead.map((s) => s.parentSpanContext?.spanId)).toEqual([send?.spanId, send?.spanId]);

    // Every message, also those of the publishMany call, reached its send span.
    for (const id of ids) {
      const [span] = processSpans('traced', id).slice(-1);
      expect(span?.parentSpanContext?.spanId, id).toBe(sendOf(id)?.spanId);
    }

    // Link mode: a trace of its own, with a link to the send span.
    const linkedSpans: ReadableSpan[] = processSpans('traced-linked', first);
    expect(linkedSpans).toHaveLength(1);
    expect(linkedSpans[0]?.spanContext().traceId).not.toBe(send?.traceId);
    expect(linkedSpans[0]?.links.map((l) => l.context.spanId)).toEqual([send?.spanId]);
  });

  it('stores no trace context when no SDK is registered, or with tracing: false', async () => {
    const { ids, spans } = await publishElsewhere(t.db.url, 'trace.plain', 1, true);
    expect(spans).toEqual([]);
    const quiet = t.outbox({ tracing: false });
    const own = await quiet.publish(t.pool, 'trace.plain', {}, { headers: { 'x-own': 'yes' } });
    const { rows } = await t.pool.query<{ id: string; headers: Record<string, string> }>(
      `SELECT id::text, headers FROM outbox.messages WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [[...ids, own.id]],
    );
    expect(rows.map((r) => r.headers)).toEqual([{}, {}, {}, { 'x-own': 'yes' }]);
  });

  it('keeps a traceparent the caller set', async () => {
    const o = t.outbox();
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const { id } = await o.publish(t.pool, 'trace.own', {}, { headers: { traceparent, 'x-b': '1' } });
    const { rows } = await t.pool.query<{ headers: Record<string, string> }>(
      `SELECT headers FROM outbox.messages WHERE id = $1::bigint`,
      [id],
    );
    expect(rows[0]?.headers).toEqual({ traceparent, 'x-b': '1' });
  });

  it('refuses bad tracing options with a typed error', () => {
    for (const tracing of [{ enabled: 'yes' }, { link: 1 }, { tracerProvider: {} }, { sampler: true }]) {
      let error: unknown;
      try {
        t.outbox({ tracing: tracing as never });
      } catch (e) {
        error = e;
      }
      expect(isOutboxError(error), JSON.stringify(tracing)).toBe(true);
    }
  });
});
