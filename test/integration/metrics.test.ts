import { spawn } from 'node:child_process';
import { Registry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isOutboxError, type Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// A scripted run (successes, retries, dead letters, a transactional subscription, a subscription nobody consumes)
// and then one scrape: every counter agrees with the audit views, and the gauges with audit_subscriptions.

type Sample = MetricValue<string>;

async function scrape(registry: Registry): Promise<Map<string, Sample[]>> {
  const metrics = (await registry.getMetricsAsJSON()) as MetricObjectWithValues<Sample>[];
  return new Map(metrics.map((m) => [m.name, m.values]));
}

/** The sum of a metric's samples whose labels include `match`. */
function total(samples: Sample[] | undefined, match: Record<string, string>): number {
  return (samples ?? [])
    .filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

describe('metrics', () => {
  let t: OutboxTestContext;
  let o: Outbox;
  const registry = new Registry();
  const fast = { retry: { minDelayMs: 0, maxDelayMs: 0 }, pollIntervalMs: 20 };

  beforeAll(async () => {
    t = await setupOutboxTest();
    o = t.outbox({ relay: { pollIntervalMs: 5 } });
    await o.metrics({ registry });
  });
  afterAll(async () => t.close());

  it('counts a scripted run as the audit views show it', async () => {
    await o.declareSubscription('m-idle', { topics: ['m.paid'] }); // never consumed: its deliveries stay pending
    const seen = new Map<string, number>();
    o.subscribe('m-ok', { topics: ['m.paid', 'm.shipped'], ...fast }, () => {});
    o.subscribe('m-flaky', { topics: ['m.paid'], ...fast }, (message) => {
      const n = (seen.get(message.id) ?? 0) + 1;
      seen.set(message.id, n);
      if (Number(message.id) % 3 === 0 && n === 1) throw new Error('first attempt fails');
    });
    o.subscribe('m-dead', { topics: ['m.shipped'], maxAttempts: 2, ...fast }, () => {
      throw new Error('always fails');
    });
    o.subscribe('m-tx', { topics: ['m.paid'], mode: 'transactional', ...fast }, async (message, ctx) => {
      if (Number(message.id) % 4 === 0 && message.attempt === 1) throw new Error('tx attempt fails');
      await ctx.tx.query('SELECT 1');
    });
    await o.start();
    await o.publishMany(
      t.pool,
      Array.from({ length: 12 }, (_, i) => ({ topic: 'm.paid', payload: { i } })),
    );
    for (let i = 0; i < 5; i++) await o.publish(t.pool, 'm.shipped', { i });

    // Every delivery but m-idle's has finished (12 + 5 for m-ok, 12 for m-flaky, 5 dead, 12 for m-tx).
    await waitFor('all consumed deliveries finished', async () => {
      const { rows } = await t.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM outbox.audit_deliveries
         WHERE subscription <> 'm-idle' AND status IN ('done', 'dead')`,
      );
      return Number(rows[0]?.n) === 17 + 12 + 5 + 12;
    });
    await o.stop(); // every outcome reported before the scrape

    const m = await scrape(registry);
    const published = await t.pool.query<{ topic: string; n: string }>(
      `SELECT topic, count(*) AS n FROM outbox.audit_messages GROUP BY topic`,
    );
    for (const row of published.rows) {
      expect(total(m.get('pg_outbox_messages_published_total'), { topic: row.topic })).toBe(Number(row.n));
      expect(total(m.get('pg_outbox_messages_relayed_total'), { topic: row.topic })).toBe(Number(row.n));
    }

    const byStatus = await t.pool.query<{ subscription: string; topic: string; status: string; n: string }>(
      `SELECT d.subscription, m.topic, d.status, count(*) AS n
       FROM outbox.audit_deliveries d
       JOIN outbox.audit_messages m USING (message_id)
       GROUP BY 1, 2, 3`,
    );
    const failures = await t.pool.query<{ subscription: string; n: string }>(
      `SELECT subscription, count(*) AS n FROM outbox.audit_failures GROUP BY 1`,
    );
    for (const sub of ['m-ok', 'm-flaky', 'm-dead', 'm-tx']) {
      const of = (status: string) =>
        byStatus.rows
          .filter((r) => r.subscription === sub && r.status === status)
          .reduce((sum, r) => sum + Number(r.n), 0);
      const failed = Number(failures.rows.find((r) => r.subscription === sub)?.n ?? 0);
      const labels = { subscription: sub };
      expect(total(m.get('pg_outbox_deliveries_handled_total'), labels), sub).toBe(of('done'));
      expect(total(m.get('pg_outbox_deliveries_dead_lettered_total'), labels), sub).toBe(of('dead'));
      // Every failed attempt left a failure row; those that did not end in a dead letter were retried.
      expect(total(m.get('pg_outbox_deliveries_retried_total'), labels), sub).toBe(failed - of('dead'));
      // One handler call per attempt, and one latency sample per first attempt. In transactional mode a chunk
      // that rolled back for one failure runs its other handlers again (their effects commit once): more calls.
      const calls = total(m.get('pg_outbox_handler_duration_seconds'), { ...labels, le: '+Inf' });
      const firsts = total(m.get('pg_outbox_delivery_latency_seconds'), { ...labels, le: '+Inf' });
      if (sub === 'm-tx') {
        expect(calls).toBeGreaterThanOrEqual(of('done') + failed);
        expect(firsts).toBeGreaterThanOrEqual(of('done') + of('dead'));
      } else {
        expect(calls, sub).toBe(of('done') + failed);
        expect(firsts, sub).toBe(of('done') + of('dead'));
      }
    }
    // Per topic as well: m-ok handled 12 m.paid and 5 m.shipped.
    expect(
      total(m.get('pg_outbox_deliveries_handled_total'), { subscription: 'm-ok', topic: 'm.shipped' }),
    ).toBe(5);
    expect(total(m.get('pg_outbox_deliveries_retried_total'), { subscription: 'm-flaky' })).toBe(4);

    const view = await t.pool.query<{ subscription: string; pending: string; dead: string }>(
      `SELECT subscription, pending, dead FROM outbox.audit_subscriptions`,
    );
    for (const row of view.rows) {
      const labels = { subscription: row.subscription };
      expect(total(m.get('pg_outbox_deliveries_pending'), labels), row.subscription).toBe(
        Number(row.pending),
      );
      expect(total(m.get('pg_outbox_deliveries_dead'), labels), row.subscription).toBe(Number(row.dead));
    }
    expect(total(m.get('pg_outbox_deliveries_pending'), { subscription: 'm-idle' })).toBe(12);
    expect(total(m.get('pg_outbox_oldest_pending_age_seconds'), { subscription: 'm-idle' })).toBeGreaterThan(
      0,
    );
    expect(m.get('pg_outbox_relay_backlog_messages')?.[0]?.value).toBe(0);

    // The text exposition Prometheus reads: names, units and bounded labels (never an id or a key).
    const text = await registry.metrics();
    expect(text).toContain('pg_outbox_messages_published_total{schema="outbox",topic="m.paid"} 12');
    expect(text).toContain('# TYPE pg_outbox_handler_duration_seconds histogram');
    expect(text).not.toMatch(/message_id|delivery_id|key=/);
  });

  it('reports several schemas into one registry, and close() takes the metrics off it', async () => {
    const shared = new Registry();
    const first = t.outbox();
    const second = t.outbox({ schema: 'outbox_metrics_b' });
    await second.migrate();
    const a = await first.metrics({ registry: shared });
    const b = await second.metrics({ registry: shared });
    await second.publish(t.pool, 'm.other', {});
    await first.publish(t.pool, 'm.other', {});
    await first.publish(t.pool, 'm.other', {});
    const m = await scrape(shared);
    expect(total(m.get('pg_outbox_messages_published_total'), { schema: 'outbox' })).toBe(2);
    expect(total(m.get('pg_outbox_messages_published_total'), { schema: 'outbox_metrics_b' })).toBe(1);
    expect(
      m
        .get('pg_outbox_relay_backlog_messages')
        ?.map((s) => s.labels.schema)
        .sort(),
    ).toEqual(['outbox', 'outbox_metrics_b']);
    a.close();
    await second.publish(t.pool, 'm.other', {});
    await first.publish(t.pool, 'm.other', {}); // no longer counted
    const after = await scrape(shared);
    expect(total(after.get('pg_outbox_messages_published_total'), { schema: 'outbox' })).toBe(2);
    expect(total(after.get('pg_outbox_messages_published_total'), { schema: 'outbox_metrics_b' })).toBe(2);
    b.close();
    expect(await shared.getMetricsAsJSON()).toEqual([]);
  });

  it('leaves the database gauges out with gauges: false', async () => {
    const quiet = new Registry();
    const metrics = await t.outbox().metrics({ registry: quiet, gauges: false });
    const m = await scrape(quiet);
    expect(m.get('pg_outbox_deliveries_pending')).toEqual([]);
    expect(m.has('pg_outbox_messages_published_total')).toBe(true);
    metrics.close();
  });

  it('refuses bad options with a typed error', async () => {
    const bad = [
      [{ regsitry: new Registry() }, 'OUTBOX_UNKNOWN_OPTION'],
      [{ gauges: 'yes' }, 'OUTBOX_INVALID_OPTION'],
      [{ durationBuckets: [0.1, 0.05] }, 'OUTBOX_INVALID_OPTION'],
      [{ latencyBuckets: 'fast' }, 'OUTBOX_INVALID_OPTION'],
    ] as const;
    for (const [options, code] of bad) {
      const error = await t
        .outbox()
        .metrics(options as never)
        .catch((e: unknown) => e);
      expect(isOutboxError(error, code), JSON.stringify(options)).toBe(true);
    }
  });
});

describe('examples/metrics', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('serves /metrics over HTTP while it runs, and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'examples/metrics/main.ts'], {
      env: { ...process.env, DATABASE_URL: t.db.url, PORT: '0', LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    try {
      const url = await waitFor('the example to listen', () => /serving (\S+)/.exec(stdout)?.[1], 60_000);
      // Progress, not time: scrape until the consumer has handled a few orders.
      const text = await waitFor(
        'five orders handled',
        async () => {
          const body = await (await fetch(url)).text();
          const handled =
            /pg_outbox_deliveries_handled_total\{[^}]*subscription="shipping"[^}]*\} (\d+)/.exec(body);
          return Number(handled?.[1] ?? 0) >= 5 ? body : null;
        },
        60_000,
        100,
      );
      expect(text).toMatch(
        /pg_outbox_messages_published_total\{schema="metrics_example",topic="order.paid"\} \d+/,
      );
      expect(text).toContain(
        'pg_outbox_deliveries_pending{schema="metrics_example",subscription="shipping"}',
      );
      expect(text).toContain('process_cpu_user_seconds_total'); // Node's default metrics beside ours
      expect((await fetch(url.replace('/metrics', '/other'))).status).toBe(404);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(stdout).toMatch(/stopped after \d+ orders/);
  });
});

describe('metrics after registry.resetMetrics()', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('counts again from zero', async () => {
    const registry = new Registry();
    const o = t.outbox({ relay: { pollIntervalMs: 5 } });
    const handled: string[] = [];
    o.subscribe('reset', { topics: ['reset.job'], pollIntervalMs: 20 }, (m) => {
      handled.push(m.id);
    });
    await o.metrics({ registry, gauges: false });
    await o.start();
    await o.publish(t.pool, 'reset.job', {});
    await waitFor('one handled', () => handled.length === 1);
    await waitFor('one counted', async () => {
      const m = await scrape(registry);
      return total(m.get('pg_outbox_deliveries_handled_total'), {}) === 1;
    });
    registry.resetMetrics();
    await o.publish(t.pool, 'reset.job', {});
    await o.publish(t.pool, 'reset.job', {});
    await waitFor('two more handled', () => handled.length === 3);
    await o.stop();
    const m = await scrape(registry);
    expect(total(m.get('pg_outbox_messages_published_total'), {})).toBe(2);
    expect(total(m.get('pg_outbox_deliveries_handled_total'), {})).toBe(2);
    expect(total(m.get('pg_outbox_handler_duration_seconds'), { le: '+Inf' })).toBe(2);
  });
});
