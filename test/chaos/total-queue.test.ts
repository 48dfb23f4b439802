import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { count, setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { killChildren, spawnFixture, type ConsumerChild } from './child.js';
import type { AccountChildConfig } from './fixtures/account.fixture.js';

/*
 * The total-queue account (Jepsen's form) under consumer SIGKILLs: producers commit (and roll back) business rows
 * with their messages, three consumer processes handle them, and one of them is SIGKILLed every KILL_EVERY_MS and
 * replaced. At the end, with plain SQL: lost (committed, never handled), unexpected (handled, never committed),
 * duplicated, ok. CHAOS_ACCOUNT_N raises the message count for a longer run by hand.
 */
const FIXTURE = fileURLToPath(new URL('./fixtures/account.fixture.ts', import.meta.url));
const TOTAL = Number(process.env.CHAOS_ACCOUNT_N ?? 20_000);
const PER_TX = 50;
const ROLLBACK_EVERY = 10;
const CONSUMERS = 3;
const KILL_EVERY_MS = 2_000;
const MIN_KILLS = 4;
/**
 * How long the producer takes to commit TOTAL messages: room for MIN_KILLS kills and their replacements, and at
 * most 2,000 msg/s for a longer run.
 */
const PRODUCE_MS = Math.max((MIN_KILLS + 4) * KILL_EVERY_MS, TOTAL / 2);
const LEASE_MS = 2_000;
const POLL_MS = 200;
const BATCH_SIZE = 100;
/** Room for a noisy, shared 2-core machine on top of "the lease plus one poll". */
const SLACK_MS = 3_000;

interface Account {
  committed: number;
  lost: number;
  unexpected: number;
  duplicated: number;
  extraRuns: number;
  ok: number;
}

interface Kill {
  pid: number;
  at: Date;
  /** Deliveries under a lease when the kill happened: the killed process's and the survivors'. */
  leased: string[];
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('the total-queue account under consumer SIGKILLs', () => {
  let t: OutboxTestContext;
  let relay: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest({ poolMax: 10 });
    await t.pool.query(`CREATE TABLE public.account_orders (subscription text NOT NULL, n int NOT NULL)`);
    // No unique key: every run of a handler leaves a row, so duplicates show.
    await t.pool.query(
      `CREATE TABLE public.account_effects (
         subscription text NOT NULL, n int NOT NULL, message_id bigint NOT NULL, attempt int NOT NULL,
         pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
    );
    relay = t.outbox({ consumers: false });
    await relay.start();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  /** Transactions of PER_TX business rows + their messages; every ROLLBACK_EVERY-th one rolls back. */
  async function produce(subscription: string, topic: string): Promise<void> {
    let committed = 0;
    const started = Date.now();
    for (let tx = 0; committed < TOTAL; tx += 1) {
      const ns = Array.from({ length: PER_TX }, (_, i) => tx * PER_TX + i);
      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(
          'INSERT INTO public.account_orders (subscription, n) SELECT $1, unnest($2::int[])',
          [subscription, ns],
        );
        await relay.publishMany(
          client,
          ns.map((n) => ({ topic, payload: { n } })),
        );
        if (tx % ROLLBACK_EVERY === ROLLBACK_EVERY - 1) {
          await client.query('ROLLBACK');
        } else {
          await client.query('COMMIT');
          committed += PER_TX;
        }
      } finally {
        client.release();
      }
      // A steady producer paced by the clock, so the kills land while work arrives however fast publishing is.
      await sleep(started + (committed / TOTAL) * PRODUCE_MS - Date.now());
    }
  }

  async function account(subscription: string): Promise<Account> {
    const { rows } = await t.pool.query<Record<keyof Account, string>>(
      `WITH committed AS (SELECT n FROM public.account_orders WHERE subscription = $1),
            runs AS (SELECT n, count(*) AS k FROM public.account_effects WHERE subscription = $1 GROUP BY n)
       SELECT (SELECT count(*) FROM committed) AS committed,
              (SELECT count(*) FROM committed c WHERE NOT EXISTS (SELECT FROM runs r WHERE r.n = c.n)) AS lost,
              (SELECT count(*) FROM runs r WHERE NOT EXISTS (SELECT FROM committed c WHERE c.n = r.n)) AS unexpected,
              (SELECT count(*) FROM runs r JOIN committed c USING (n) WHERE r.k > 1) AS duplicated,
              (SELECT coalesce(sum(r.k - 1), 0) FROM runs r JOIN committed c USING (n)) AS "extraRuns",
              (SELECT count(*) FROM runs r JOIN committed c USING (n) WHERE r.k = 1) AS ok`,
      [subscription],
    );
    const row = rows[0] as Record<keyof Account, string>;
    return Object.fromEntries(Object.entries(row).map(([k, v]) => [k, Number(v)])) as unknown as Account;
  }

  async function spawnReady(config: AccountChildConfig): Promise<ConsumerChild> {
    const child = spawnFixture(FIXTURE, config);
    await child.waitForEvents('consumer ready', (e) => e.event === 'ready', 1, 30_000);
    return child;
  }

  /** SIGKILLs one consumer and records what was under a lease at that moment (database clock). */
  async function killOne(children: ConsumerChild[], subscriptionId: number): Promise<Kill> {
    const victim = children.splice(Math.floor(Math.random() * children.length), 1)[0] as ConsumerChild;
    await victim.kill('SIGKILL');
    const { rows } = await t.pool.query<{ id: string; at: Date }>(
      `SELECT d.id::text, clock_timestamp() AS at FROM outbox.deliveries d
       WHERE d.subscription_id = $1 AND d.state = 'pending' AND d.leased_until > clock_timestamp()`,
      [subscriptionId],
    );
    const at =
      rows[0]?.at ?? (await t.pool.query<{ at: Date }>('SELECT clock_timestamp() AS at')).rows[0]!.at;
    return { pid: victim.pid, at, leased: rows.map((r) => r.id) };
  }

  it.each(['lease', 'transactional'] as const)(
    'loses nothing and handles nothing uncommitted while consumers are SIGKILLed (%s mode)',
    async (mode) => {
      const subscription = `account_${mode}`;
      const topic = `account.${mode}`;
      await relay.declareSubscription(subscription, { topics: [topic] });
      const subscriptionId = Number(
        (
          await t.pool.query<{ id: number }>('SELECT id FROM outbox.subscriptions WHERE name = $1', [
            subscription,
          ])
        ).rows[0]?.id,
      );
      const config: AccountChildConfig = {
        url: t.db.url,
        subscription,
        topic,
        mode,
        leaseMs: LEASE_MS,
        pollIntervalMs: POLL_MS,
        batchSize: BATCH_SIZE,
        concurrency: 10,
        handlerMs: 2,
      };
      const children = await Promise.all(Array.from({ length: CONSUMERS }, () => spawnReady(config)));
      const kills: Kill[] = [];
      let producing = true;
      const producer = produce(subscription, topic).finally(() => (producing = false));
      const completed = () =>
        count(t.pool, `SELECT count(*) AS n FROM outbox.completed_deliveries WHERE subscription_id = $1`, [
          subscriptionId,
        ]);
      const deadline = Date.now() + 120_000;
      // Kill while work is arriving or waiting; a wedged queue ends at the deadline and fails the account below.
      while ((producing || (await completed()) < TOTAL) && Date.now() < deadline) {
        await sleep(KILL_EVERY_MS);
        kills.push(await killOne(children, subscriptionId));
        children.push(await spawnReady(config));
      }
      await producer;
      await waitFor('every committed message done', async () => (await completed()) >= TOTAL, 60_000).catch(
        (error: unknown) => console.error(error), // the account below says what is missing
      );

      const result = await account(subscription);
      // The redelivery bound: every delivery under a lease at a kill was done within the lease plus one poll.
      const { rows: late } = await t.pool.query<{ ms: number }>(
        `SELECT max(extract(epoch FROM c.completed_at - k.at) * 1000)::float8 AS ms
         FROM unnest($1::bigint[], $2::timestamptz[]) AS k(id, at)
         JOIN outbox.completed_deliveries c ON c.id = k.id`,
        [kills.flatMap((k) => k.leased), kills.flatMap((k) => k.leased.map(() => k.at))],
      );
      const inFlightAtKills = kills.reduce((sum, k) => sum + k.leased.length, 0);
      const { rows: retried } = await t.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM outbox.completed_deliveries WHERE subscription_id = $1 AND attempt > 1`,
        [subscriptionId],
      );
      console.info(
        `total-queue account (${mode}): ${JSON.stringify(result)}; kills ${kills.length}, ` +
          `in flight at the kills ${inFlightAtKills}, redelivered ${retried[0]?.n}, ` +
          `slowest redelivery ${Math.round(late[0]?.ms ?? 0)} ms after its kill`,
      );

      expect(kills.length).toBeGreaterThanOrEqual(MIN_KILLS);
      expect(result.committed).toBe(TOTAL);
      expect(result.lost).toBe(0);
      expect(result.unexpected).toBe(0);
      expect(result.ok + result.duplicated).toBe(TOTAL);
      if (mode === 'transactional') {
        // The handler's effect commits with its ack: a killed transaction leaves nothing behind.
        expect(result.duplicated).toBe(0);
      } else {
        expect(result.extraRuns).toBeLessThanOrEqual(inFlightAtKills);
      }
      expect(late[0]?.ms ?? 0).toBeLessThanOrEqual(LEASE_MS + POLL_MS + SLACK_MS);
      expect(await completed()).toBe(TOTAL);
      await Promise.all(children.map((c) => c.kill('SIGKILL')));
    },
    240_000,
  );
});
