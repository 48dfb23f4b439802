import pg from 'pg';
import { pgExecutor, type Executor } from '../../src/db/executor.js';
import { schemaName } from '../../src/db/identifiers.js';
import { count, dropSchemas, inTransaction, preciseNow, waitFor } from './db.js';
import type { RelayCode, RelayOutbox } from './relay-code.js';
import { counterDelta, readServerCounters, type ServerCounters } from './server-counters.js';
import { median } from './stats.js';
import { int } from './table.js';

/**
 * The two ways the relay-backlog scenario runs a relay over a backlog (see scenarios/relay-backlog.ts): the real
 * relay timed from start() to the last batch, and the relay's own statements driven and timed batch by batch.
 */
const TOPIC = 'bench.relay';
/** The relay's default batchSize, set explicitly so that both checkouts run the same. */
export const BATCH = 1000;
export const PER_TX = 1000;
export const STATEMENT_RUNS = 5;
const TIMEOUT_MS = 1_800_000;

export interface Code extends RelayCode {
  schema: string;
}

const POSITION_ATTEMPTS = 50;

/**
 * Migrates a fresh schema while another session's transaction is open, so that the relay's first position (the
 * snapshot migrate() takes) lists that xid as running, as a relay's saved position on a server with traffic nearly
 * always does. It must list only that one: a position that also caught other sessions' transactions (the shared
 * server runs other tests) is taken again, so that every run has the same. Returns how many xids it listed.
 */
async function migrateWithOneRunningXid(pool: pg.Pool, code: Code, outbox: RelayOutbox): Promise<number> {
  let listed = 0;
  for (let attempt = 1; attempt <= POSITION_ATTEMPTS; attempt++) {
    await dropSchemas(pool, code.schema);
    const xip = await inTransaction(pool, async (other) => {
      const { rows } = await other.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
      await outbox.migrate();
      const state = await other.query<{ xip: string[] }>(
        `SELECT ARRAY(SELECT pg_snapshot_xip(done_snapshot))::text[] AS xip FROM ${code.schema}.relay_state`,
      );
      return { own: rows[0]?.xid, listed: state.rows[0]?.xip ?? [] };
    });
    listed = xip.listed.length;
    if (listed === 1 && xip.listed[0] === xip.own) break;
  }
  return listed;
}

/** A fresh schema holding n messages published while no relay ran; see migrateWithOneRunningXid. */
async function prepareBacklog(
  pool: pg.Pool,
  code: Code,
  n: number,
): Promise<{ outbox: RelayOutbox; xids: number }> {
  const outbox = code.createOutbox({
    pool,
    schema: code.schema,
    consumers: false,
    relay: { batchSize: BATCH },
  });
  const xids = await migrateWithOneRunningXid(pool, code, outbox);
  await outbox.declareSubscription('relayed', { topics: [TOPIC] });
  for (let done = 0; done < n; done += PER_TX) {
    const chunk = Array.from({ length: Math.min(PER_TX, n - done) }, (_, i) => ({
      topic: TOPIC,
      payload: { n: done + i },
    }));
    await inTransaction(pool, (client) => outbox.publishMany(client, chunk));
  }
  // Autovacuum (off on the shared server) would have vacuumed and analysed a table that grew this much.
  await pool.query(`VACUUM ANALYZE ${code.schema}.messages`);
  // The fill's dirty pages are written now, not during the measured relay.
  await pool.query('CHECKPOINT');
  return { outbox, xids };
}

async function withDeadline(what: string, promise: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_MS} ms: ${what}`)), TIMEOUT_MS);
  });
  try {
    await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function checkDelivered(pool: pg.Pool, code: Code, n: number): Promise<void> {
  const deliveries = await count(pool, `SELECT count(*) AS n FROM ${code.schema}.deliveries`);
  if (deliveries !== n) throw new Error(`${code.label}: ${deliveries} deliveries for ${n} messages`);
}

export interface TimedRun {
  rate: number;
  /** Running xids listed in the relay's position (1 unless other sessions kept getting in the way). */
  xids: number;
}

/** The real relay from start() until every message is relayed and relay_state shows its window closed. */
export async function timedRelay(pool: pg.Pool, code: Code, n: number): Promise<TimedRun> {
  const { outbox, xids } = await prepareBacklog(pool, code, n);
  let relayed = 0;
  let reached: () => void = () => undefined;
  const all = new Promise<void>((resolve) => (reached = resolve));
  outbox.on('relay:batch', ({ messages }) => {
    relayed += messages;
    if (relayed >= n) reached();
  });
  const started = preciseNow();
  await outbox.start();
  try {
    await withDeadline(`${code.label} relaying ${int(n)} messages`, all);
    await waitFor(
      'relay_state to show the window closed',
      async () =>
        (await count(
          pool,
          `SELECT count(*) AS n FROM ${code.schema}.relay_state WHERE target_snapshot IS NULL`,
        )) === 1,
      { intervalMs: 1 },
    );
    return { rate: n / ((preciseNow() - started) / 1000), xids };
  } finally {
    await outbox.stop();
    await checkDelivered(pool, code, n);
    await dropSchemas(pool, code.schema);
  }
}

/** Per batch: ms of BEGIN_RELAY_BATCH + readRelayWindow + COMMIT, and of relayBatch. */
interface BatchTimes {
  overhead: number;
  statement: number;
}

export interface Profile {
  rate: number;
  xids: number;
  /** Median relayBatch ms in the first tenth, the middle tenth and the last tenth of the window. */
  statementMs: [number, number, number];
  overheadMs: number;
  counters: ServerCounters;
  mid: { explainMs: number; statementMs: number; readMs: number; insertMs: number; plan: string[] };
}

const planMs = (plan: string, node: RegExp) =>
  Number(new RegExp(`${node.source}[^\\n]*actual time=[\\d.]+\\.\\.([\\d.]+)`).exec(plan)?.[1] ?? NaN);

/** The next batch as the relay would run it, EXPLAIN'd and plain, each in a transaction rolled back. */
async function midWindow(client: pg.Client, code: Code): Promise<Profile['mid']> {
  const s = schemaName(code.schema);
  const exec = pgExecutor(client);
  let plan: string[] = [];
  const explain: Executor = {
    async query<R>(text: string, params: readonly unknown[] = []): Promise<R[]> {
      const result = await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${text}`, [
        ...params,
      ]);
      plan = result.rows.map((r) => r['QUERY PLAN']);
      return [];
    },
  };
  const once = async (on: Executor): Promise<number> => {
    await client.query(code.beginBatch);
    try {
      const window = await code.readRelayWindow(exec, s);
      const started = preciseNow();
      await code.relayBatch(on, s, window, BATCH);
      return preciseNow() - started;
    } finally {
      await client.query('ROLLBACK');
    }
  };
  const runs: { explain: number; plain: number; read: number; insert: number; plan: string[] }[] = [];
  for (let i = 0; i < STATEMENT_RUNS; i++) {
    await once(explain);
    const text = plan.join('\n');
    const explainMs = Number(/Execution Time: ([\d.]+)/.exec(text)?.[1] ?? NaN);
    const read = planMs(text, /CTE batch\n\s+->/);
    const insert = planMs(text, /Insert on deliveries/);
    runs.push({ explain: explainMs, plain: await once(exec), read, insert, plan });
  }
  // The plan shown is the run with the median execution time.
  const byTime = [...runs].sort((a, b) => a.explain - b.explain);
  return {
    explainMs: median(runs.map((r) => r.explain)),
    statementMs: median(runs.map((r) => r.plain)),
    readMs: median(runs.map((r) => r.read)),
    insertMs: median(runs.map((r) => r.insert)),
    plan: byTime[Math.floor(byTime.length / 2)]?.plan ?? [],
  };
}

/** Drives the relay's statements over the whole window on one connection, timing each; see the file comment. */
export async function profileRelay(pool: pg.Pool, url: string, code: Code, n: number): Promise<Profile> {
  const { xids } = await prepareBacklog(pool, code, n);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const s = schemaName(code.schema);
  const exec = pgExecutor(client);
  const batches: BatchTimes[] = [];
  let mid: Profile['mid'] | undefined;
  try {
    const before = await readServerCounters(pool, code.schema);
    const started = preciseNow();
    let relayed = 0;
    let pausedMs = 0;
    for (let last = BATCH; last === BATCH;) {
      if (mid === undefined && relayed >= n / 2) {
        const paused = preciseNow();
        mid = await midWindow(client, code);
        pausedMs = preciseNow() - paused;
      }
      const t0 = preciseNow();
      await client.query(code.beginBatch);
      const window = await code.readRelayWindow(exec, s);
      const t1 = preciseNow();
      last = (await code.relayBatch(exec, s, window, BATCH)).messages;
      const t2 = preciseNow();
      await client.query('COMMIT');
      batches.push({ overhead: t1 - t0 + (preciseNow() - t2), statement: t2 - t1 });
      relayed += last;
    }
    // The pause for the mid-window statements is not relay work: left out of the profile's rate.
    const seconds = (preciseNow() - started - pausedMs) / 1000;
    // This connection's statistics reach the shared counters when it next goes idle after this.
    await client.query('SELECT pg_stat_force_next_flush()');
    await client.query('SELECT 1');
    const counters = counterDelta(before, await readServerCounters(pool, code.schema));
    await checkDelivered(pool, code, n);
    const tenth = Math.max(1, Math.floor(batches.length / 10));
    const middle = Math.floor(batches.length / 2 - tenth / 2);
    const statement = (from: number, to: number) => median(batches.slice(from, to).map((b) => b.statement));
    return {
      rate: relayed / seconds,
      xids,
      statementMs: [statement(0, tenth), statement(middle, middle + tenth), statement(-tenth - 1, -1)],
      overheadMs: median(batches.map((b) => b.overhead)),
      counters,
      mid: mid ?? { explainMs: NaN, statementMs: NaN, readMs: NaN, insertMs: NaN, plan: [] },
    };
  } finally {
    await client.end();
    await dropSchemas(pool, code.schema);
  }
}

/** The batch read (CTE batch), the insert's and the statement's totals; the rest of the plan is the same in both. */
export function trimPlan(plan: string[]): string {
  const start = plan.findIndex((l) => l.startsWith('  CTE batch'));
  const end = plan.findIndex((l, i) => i > start && /^ {2}CTE /.test(l));
  const insert = plan.findIndex((l) => l.includes('Insert on deliveries'));
  if (start < 0 || end < 0 || insert < 0) return plan.join('\n');
  return [
    ...plan.slice(0, 2),
    ...plan.slice(start, end),
    '  ...',
    ...plan.slice(insert - 1, insert + 2),
    '  ...',
    ...plan.filter((l) => l.startsWith('Execution Time')),
  ].join('\n');
}
