import { createServer } from 'node:net';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SettleBuffer } from '../../src/consumer/settle-buffer.js';
import { pgExecutor } from '../../src/db/executor.js';
import { schemaName } from '../../src/db/identifiers.js';
import { discard, RetryAfterError, type Outbox } from '../../src/index.js';
import { settleDeliveries, settlementKey, type Settlement } from '../../src/sql/deliveries.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const MODES = ['lease', 'transactional'] as const;
const SCHEMA = schemaName('outbox');

let t: OutboxTestContext;
let serial = 0;
const nextName = () => `outcomes_${++serial}`;

beforeAll(async () => {
  t = await setupOutboxTest();
});
afterAll(async () => t.close());

interface DeliveryRow {
  n: number;
  delivery_id: string;
  state: string;
  attempt: number;
  last_error: string | null;
  far: boolean | null;
}

/** The subscription's deliveries in payload order (payload { n }); far: due more than 29 days from now. */
async function deliveries(subscription: string): Promise<DeliveryRow[]> {
  const { rows } = await t.pool.query<DeliveryRow>(
    `SELECT (m.payload->>'n')::int AS n, d.delivery_id, d.state, d.attempt, d.last_error,
            d.available_at > now() + interval '29 days' AS far
     FROM outbox.message_deliveries d
     JOIN outbox.messages m ON m.id = d.message_id
     WHERE d.subscription = $1
     ORDER BY 1`,
    [subscription],
  );
  return rows;
}

/** An Outbox stopped after the test, also when an expectation failed before the test stopped it. */
const started: Outbox[] = [];
function newOutbox(options?: Parameters<OutboxTestContext['outbox']>[0]): Outbox {
  const outbox = t.outbox(options);
  started.push(outbox);
  return outbox;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((o) => o.stop()));
});

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
beforeEach(() => {
  unhandled.length = 0;
  process.on('unhandledRejection', onUnhandled);
});
afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
});

const BATCH = 5;
const BAD = 2;

interface BadOutcome {
  name: string;
  thrown: () => unknown;
  ends: 'retried' | 'scheduled 30 days out' | 'dead-lettered';
  lastError?: string;
}

const BAD_OUTCOMES: BadOutcome[] = [
  { name: 'RetryAfterError(1.5)', thrown: () => new RetryAfterError(1.5), ends: 'retried' },
  { name: 'RetryAfterError(NaN)', thrown: () => new RetryAfterError(Number.NaN), ends: 'retried' },
  { name: 'RetryAfterError(Infinity)', thrown: () => new RetryAfterError(Infinity), ends: 'retried' },
  { name: 'RetryAfterError(-1.5)', thrown: () => new RetryAfterError(-1.5), ends: 'retried' },
  { name: 'RetryAfterError(1e20)', thrown: () => new RetryAfterError(1e20), ends: 'scheduled 30 days out' },
  {
    name: 'an Error whose message holds NUL',
    thrown: () => new Error('bad\u0000byte'),
    ends: 'retried',
    lastError: 'bad\uFFFDbyte',
  },
  {
    name: 'a DiscardError whose message holds NUL',
    thrown: () => discard('bad\u0000byte'),
    ends: 'dead-lettered',
    lastError: 'bad\uFFFDbyte',
  },
];

describe.each(MODES)('a batch holding one bad outcome (%s mode)', (mode) => {
  it.each(BAD_OUTCOMES.map((bad) => [bad.ends, bad.name, bad] as const))(
    'acks the other deliveries and %s the one whose handler throws %s',
    async (_ends, _name, bad) => {
      const name = nextName();
      const topic = `outcome.${name}`;
      const outbox = newOutbox();
      const seen: [number, number][] = [];
      // Lease mode: every first attempt waits until all of them run, so their outcomes share one settle statement.
      let arrived = 0;
      let open: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => (open = resolve));
      outbox.subscribe(
        name,
        {
          topics: [topic],
          mode,
          concurrency: mode === 'lease' ? BATCH : 1,
          maxAttempts: 3,
          retry: { minDelayMs: 10, maxDelayMs: 50 },
        },
        async (m) => {
          const n = (m.payload as { n: number }).n;
          seen.push([n, m.attempt]);
          if (mode === 'lease' && m.attempt === 1) {
            if (++arrived === BATCH) open();
            await gate;
          }
          if (n === BAD && m.attempt === 1) throw bad.thrown();
        },
      );
      await outbox.start();
      await outbox.publishMany(
        t.pool,
        Array.from({ length: BATCH }, (_, n) => ({ topic, payload: { n } })),
      );

      const others = (rows: DeliveryRow[]) => rows.filter((r) => r.n !== BAD);
      await waitFor(
        'the other deliveries acked',
        async () => {
          const rows = others(await deliveries(name));
          return rows.length === BATCH - 1 && rows.every((r) => r.state === 'done');
        },
        10_000,
      );
      expect(others(await deliveries(name)).map((r) => r.attempt)).toEqual([1, 1, 1, 1]);

      if (bad.ends === 'dead-lettered') {
        const letters = await waitFor('the bad delivery dead-lettered', async () => {
          const found = await outbox.deadLetters(name);
          return found.length === 1 ? found : undefined;
        });
        expect(letters[0]).toMatchObject({ attempt: 1, payload: { n: BAD } });
        expect(letters[0]?.lastError).toContain(bad.lastError);
      } else {
        const row = await waitFor('the bad outcome recorded', async () => {
          const found = (await deliveries(name)).find((r) => r.n === BAD);
          if (bad.ends === 'retried') return found?.state === 'done' ? found : undefined;
          return found?.state === 'pending' && found.last_error !== null && found.far ? found : undefined;
        });
        expect(row.attempt).toBe(bad.ends === 'retried' ? 2 : 1);
        expect(row.last_error).not.toContain('\u0000');
        if (bad.lastError !== undefined) expect(row.last_error).toContain(bad.lastError);
      }
      expect(seen.filter(([n]) => n === BAD).map(([, attempt]) => attempt)).toEqual(
        bad.ends === 'retried' ? [1, 2] : [1],
      );
      await outbox.stop();
    },
  );
});

const stackThrows = () => {
  const error = new Error('boom');
  Object.defineProperty(error, 'stack', {
    get() {
      throw new Error('no stack');
    },
  });
  return error;
};
const allGettersThrow = () => {
  const error = new Error('boom');
  for (const property of ['stack', 'message']) {
    Object.defineProperty(error, property, {
      get() {
        throw new Error(`no ${property}`);
      },
    });
  }
  return error;
};

const UNPRINTABLE: { name: string; thrown: () => unknown; lastError: string }[] = [
  {
    name: 'Object.create(null)',
    thrown: () => Object.create(null) as unknown,
    lastError: 'non-printable thrown value (object)',
  },
  {
    name: 'an object whose toString throws',
    thrown: () => ({
      toString() {
        throw new Error('no');
      },
    }),
    lastError: 'non-printable thrown value (object)',
  },
  { name: 'an Error whose stack getter throws', thrown: stackThrows, lastError: 'Error: boom' },
  {
    name: 'an Error whose stack and message getters throw',
    thrown: allGettersThrow,
    lastError: 'non-printable thrown value (object)',
  },
];

describe.each(MODES)('a handler that throws something String() cannot convert (%s mode)', (mode) => {
  it.each(UNPRINTABLE.map((bad) => [bad.name, bad] as const))(
    'retries and then dead-letters the delivery, without an unhandled rejection, when it throws %s',
    async (_name, bad) => {
      const name = nextName();
      const topic = `unprintable.${name}`;
      const outbox = newOutbox();
      const attempts: number[] = [];
      outbox.subscribe(
        name,
        { topics: [topic], mode, maxAttempts: 3, retry: { minDelayMs: 10, maxDelayMs: 20 } },
        (m) => {
          attempts.push(m.attempt);
          throw bad.thrown();
        },
      );
      await outbox.start();
      await outbox.publish(t.pool, topic, { n: 0 });
      const letters = await waitFor(
        'dead-lettered after maxAttempts, or an unhandled rejection',
        async () => {
          const found = await outbox.deadLetters(name);
          return found.length === 1 || unhandled.length > 0 ? found : undefined;
        },
        10_000,
      );
      expect(unhandled).toEqual([]);
      expect(attempts).toEqual([1, 2, 3]);
      expect(letters[0]).toMatchObject({ attempt: 3, lastError: bad.lastError });
      await outbox.stop();
    },
  );
});

/** Subscribes a handler that holds every delivery until release(); resolves once `count` are held. */
async function holdDeliveries(count: number) {
  const name = nextName();
  const topic = `held.${name}`;
  const outbox = newOutbox();
  const held: Settlement[] = [];
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  outbox.subscribe(name, { topics: [topic], concurrency: count }, async (m) => {
    held.push({ deliveryId: m.deliveryId, attempt: m.attempt, outcome: 'done', delayMs: 0, error: null });
    await gate;
  });
  await outbox.start();
  await outbox.publishMany(
    t.pool,
    Array.from({ length: count }, (_, n) => ({ topic, payload: { n } })),
  );
  await waitFor('all deliveries held', () => held.length === count);
  held.sort((a, b) => Number(a.deliveryId) - Number(b.deliveryId));
  return { name, outbox, held, release };
}

function recorder() {
  const recorded = new Map<string, boolean>();
  const onWritten = (items: Settlement[], settled: Set<string>) =>
    items.forEach((i) => recorded.set(i.deliveryId, settled.has(settlementKey(i))));
  return { recorded, onWritten };
}

describe('SettleBuffer', () => {
  it('records the other outcomes of a batch and gives up on each one the database refuses with a data error', async () => {
    const { name, outbox, held, release } = await holdDeliveries(6);
    const [a, b, c, d, e, f] = held as [
      Settlement,
      Settlement,
      Settlement,
      Settlement,
      Settlement,
      Settlement,
    ];
    const logged: { level: number; deliveryId?: string }[] = [];
    const log = pino(
      { level: 'warn' },
      { write: (line: string) => logged.push(JSON.parse(line) as { level: number; deliveryId?: string }) },
    );
    const { recorded, onWritten } = recorder();
    const buffer = new SettleBuffer(
      (items) => settleDeliveries(pgExecutor(t.pool), SCHEMA, items),
      onWritten,
      log,
    );
    // Built by hand, past failedSettlement's checks: a fractional delay and a NUL in text.
    buffer.add(a);
    buffer.add({ ...b, outcome: 'retry', delayMs: 1.5, error: 'fraction' });
    buffer.add(c);
    buffer.add({ ...d, outcome: 'dead', delayMs: 0, error: 'nul \u0000 here' });
    buffer.add({ ...e, outcome: 'retry', delayMs: 60_000, error: 'fine' });
    buffer.add(f);
    await waitFor('every outcome reported', () => recorded.size === 6, 10_000);
    await buffer.close();

    expect(Object.fromEntries(recorded)).toEqual({
      [a.deliveryId]: true,
      [b.deliveryId]: false,
      [c.deliveryId]: true,
      [d.deliveryId]: false,
      [e.deliveryId]: true,
      [f.deliveryId]: true,
    });
    const rows = new Map((await deliveries(name)).map((r) => [r.delivery_id, r]));
    for (const done of [a, c, f]) expect(rows.get(done.deliveryId)).toMatchObject({ state: 'done' });
    expect(rows.get(e.deliveryId)).toMatchObject({ state: 'pending', attempt: 1, last_error: 'fine' });
    // The refused ones are untouched: their lease expires and they are redelivered.
    for (const refused of [b, d]) {
      expect(rows.get(refused.deliveryId)).toMatchObject({ state: 'pending', attempt: 1, last_error: null });
    }
    const givenUp = logged
      .filter((l) => l.level >= 50 && l.deliveryId !== undefined)
      .map((l) => l.deliveryId);
    expect(new Set(givenUp)).toEqual(new Set([b.deliveryId, d.deliveryId]));
    release();
    await outbox.stop();
  });

  it('retries the whole batch after a connection error, without splitting it', async () => {
    const { outbox, held, release, name } = await holdDeliveries(3);
    const closedPort = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const address = server.address();
        server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
      });
    });
    const unreachable = new pg.Pool({ host: '127.0.0.1', port: closedPort, user: 'postgres', max: 1 });
    const writes: number[] = [];
    const { recorded, onWritten } = recorder();
    const buffer = new SettleBuffer(
      (items) => {
        writes.push(items.length);
        const pool = writes.length === 1 ? unreachable : t.pool;
        return settleDeliveries(pgExecutor(pool), SCHEMA, items);
      },
      onWritten,
      pino({ level: 'silent' }),
    );
    held.forEach((item) => buffer.add(item));
    await waitFor('every outcome reported', () => recorded.size === 3, 10_000);
    await buffer.close();
    await unreachable.end();

    expect(writes).toEqual([3, 3]);
    expect([...recorded.values()]).toEqual([true, true, true]);
    expect((await deliveries(name)).map((r) => r.state)).toEqual(['done', 'done', 'done']);
    release();
    await outbox.stop();
  });
});

// Publishing rather than handling, but it is part of the same issue and lives here to keep to one new file.
describe('publish with delayMs', () => {
  it.each(['publish', 'publishMany'] as const)(
    'counts the delay from the %s call, not from the start of its transaction',
    async (call) => {
      const outbox = newOutbox({ relay: { enabled: false } });
      const topic = `delay.${call}`;
      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('SELECT pg_sleep(1)');
        const { rows } = await client.query<{ before: string }>('SELECT clock_timestamp()::text AS before');
        const before = rows[0]?.before;
        const ids =
          call === 'publish'
            ? [(await outbox.publish(client, topic, { n: 0 }, { delayMs: 2000 })).id]
            : (
                await outbox.publishMany(client, [
                  { topic, payload: { n: 0 }, delayMs: 2000 },
                  { topic, payload: { n: 1 }, delayMs: 2000 },
                ])
              ).map((r) => r.id);
        const check = await client.query<{ id: string; late_enough: boolean }>(
          `SELECT id::text, deliver_at >= $2::timestamptz + interval '2 seconds' AS late_enough
           FROM outbox.messages
           WHERE id = ANY ($1::bigint[])
           ORDER BY id`,
          [ids, before],
        );
        expect(check.rows).toEqual(ids.map((id) => ({ id, late_enough: true })));
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    },
  );
});
