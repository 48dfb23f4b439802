import { connectDedicated } from '../db/dedicated-client.js';
import { withStatementTimeout } from '../db/timed-connection.js';
import { setStatementTimeout } from '../sql/session.js';
import type { OutboxEmitter } from '../events.js';
import { runCleanupPass, type CleanupBounds } from '../maintenance.js';
import { startPosition } from '../message-position.js';
import { pgExecutor, type Executor } from '../db/executor.js';
import {
  cancelBackend,
  selectBackendPid,
  selectTablesToVacuum,
  selectTableStats,
  selectXminHolder,
  selectXminsStillHeld,
  vacuumTable,
  type ChurnedTable,
  type TableStats,
  type XminHolder,
} from '../sql/vacuum.js';
import type { ResolvedOptions } from '../options.js';
import { Wakeup } from './wakeup.js';

/**
 * Statements per table in one pass of the loop (100,000 rows at CLEANUP_BATCH). A larger backlog is worked off in
 * passes that follow each other at once; between them the loop logs its progress and looks at its relay again.
 */
const BATCHES_PER_PASS = 20;
/** A VACUUM of a table bloated far past the trigger can take minutes: it gets this long, not sessionTimeoutMs. */
const VACUUM_TIMEOUT_MS = 15 * 60_000;
/** Most vacuum passes a held table waits before new dead rows may bring it back (an hour at the default interval). */
const MAX_BACKOFF_PASSES = 64;

/**
 * A table that our last VACUUM left past the trigger, with most of its dead rows: the xmin horizon held them (a long
 * transaction, a replication slot, a prepared transaction), and vacuuming it again changes nothing until it moves.
 */
interface HeldTable {
  /** The xmin (as text) of the holder found then; null: none found (hidden, or gone at once). */
  horizon: string | null;
  /** Dead rows the VACUUM left. */
  deadAfter: number;
  /** Vacuum passes to wait, doubled by each VACUUM in a row that left the table held. */
  backoff: number;
  /** The vacuum pass from which on it may be tried again. */
  retryAt: number;
}

/**
 * Whether VACUUM left the table held: past the trigger still, and with more than half the dead rows it found. Only
 * when the statistics already count this VACUUM (from PostgreSQL 15 on; see selectTableStats): on 13 and 14 every
 * pass vacuums as before.
 */
const leftHeld = (before: TableStats, after: TableStats | null): after is TableStats =>
  after !== null &&
  after.vacuums > before.vacuums &&
  after.dead > after.trigger &&
  after.dead > before.dead / 2;

/**
 * A held table is vacuumed again once its holder has let go, or, after its backoff, once as many dead rows again as
 * the trigger have come on top of those the VACUUM left.
 */
const retryDue = (stats: TableStats, held: HeldTable, pass: number, stillHeld: Set<string>) =>
  (held.horizon !== null && !stillHeld.has(held.horizon)) ||
  (pass >= held.retryAt && stats.dead > held.deadAfter + stats.trigger);

export interface MaintenanceLoop {
  start(): void;
  stop(): Promise<void>;
}

/**
 * Retention (expired idempotency keys, dead letters, and finished messages with their deliveries) and VACUUM of
 * the outbox tables, in a loop of its own next to the relay: it runs on pool connections, so a slow or failing pass neither delays a relay batch nor costs the relay its connection and lock.
 * It works only while isLeader() (one process per schema cleans up) and runs a pass as soon as its relay leads,
 * so processes restarted more often than maintenanceIntervalMs still clean up. A pass that ends with work left
 * is followed by the next at once; otherwise the loop waits maintenanceIntervalMs.
 */
export function createMaintenanceLoop(
  config: ResolvedOptions,
  events: OutboxEmitter,
  isLeader: () => boolean,
): MaintenanceLoop {
  const log = config.logger.child({ component: 'maintenance', schema: config.schema.name });
  const { maintenanceIntervalMs, sessionTimeoutMs, standbyPollMs } = config.relay;
  const wakeup = new Wakeup();
  let running: Promise<void> | null = null;
  let stopping = false;
  // The server process running a VACUUM now: stop() cancels it rather than wait minutes for it.
  let vacuumPid: number | null = null;
  const bounds: CleanupBounds = { maxBatches: BATCHES_PER_PASS, stop: () => stopping || !isLeader() };
  // A failing cleanup is not urgent, and a lasting fault (a missing privilege) should not flood the log: retries
  // double from 200 ms up to the interval.
  const retryMs = (failures: number) => Math.min(maintenanceIntervalMs, 100 * 2 ** Math.min(failures, 20));

  // Tables our VACUUM could not clean (see HeldTable), and the count of vacuum passes.
  const held = new Map<ChurnedTable, HeldTable>();
  let vacuumPasses = 0;

  /** The tables due: past the trigger, and not held, or held but due again (see retryDue). */
  async function tablesToVacuum(exec: Executor): Promise<TableStats[]> {
    const due = await selectTablesToVacuum(exec, config.schema);
    // Below the trigger again: someone else's VACUUM (autovacuum) cleaned it.
    for (const table of held.keys()) if (!due.some((d) => d.table === table)) held.delete(table);
    const horizons = [...held.values()].flatMap((h) => (h.horizon === null ? [] : [h.horizon]));
    const stillHeld = new Set(horizons.length > 0 ? await selectXminsStillHeld(exec, horizons) : []);
    return due.filter((d) => {
      const h = held.get(d.table);
      return h === undefined || retryDue(d, h, vacuumPasses, stillHeld);
    });
  }

  /** Notes what a VACUUM left: a table left held waits (see HeldTable); the first time, a warning names the holder. */
  async function noteVacuum(exec: Executor, before: TableStats, after: TableStats | null, ms: number) {
    const previous = held.get(before.table);
    if (!leftHeld(before, after)) {
      held.delete(before.table);
      return;
    }
    const holder: XminHolder | null = await selectXminHolder(exec, ms);
    const backoff = previous === undefined ? 1 : Math.min(2 * previous.backoff, MAX_BACKOFF_PASSES);
    const horizon = holder?.xmin ?? null;
    held.set(before.table, { horizon, deadAfter: after.dead, backoff, retryAt: vacuumPasses + backoff });
    if (previous === undefined || previous.horizon !== horizon) {
      log.warn(
        {
          table: before.table,
          deadBefore: before.dead,
          deadAfter: after.dead,
          holder,
          retryInPasses: backoff,
        },
        'vacuum left the dead rows: the xmin horizon holds them',
      );
    }
  }

  /*
   * Retention and the consumers leave dead rows behind, and only a VACUUM makes their space reusable. Autovacuum does
   * it where it is on, but with its cost delay it fell behind a drain of 5,000 msg/s (bench/RESULTS.md, retention
   * soak), and where it is off nothing does. So after each pass, each outbox table past autovacuum's trigger is
   * vacuumed here, one at a time, unless relay.vacuum is false. While the xmin horizon is held, a VACUUM removes
   * nothing and the table stays past the trigger: it then waits (see HeldTable), not vacuumed again each pass.
   */
  async function vacuumChurnedTables(): Promise<void> {
    vacuumPasses += 1;
    const tables = await tablesToVacuum(pgExecutor(config.pool));
    if (tables.length === 0 || stopping) return;
    // A connection of its own, closed afterwards: a cancel from stop() can only ever reach this VACUUM, never a
    // pool connection that has gone on to run someone else's statement.
    const client = await connectDedicated(config.pool, log, () => undefined);
    const exec = pgExecutor(client);
    try {
      await setStatementTimeout(exec, VACUUM_TIMEOUT_MS);
      vacuumPid = await selectBackendPid(exec);
      for (const before of tables) {
        if (stopping || !isLeader()) return;
        const startedAt = Date.now();
        await vacuumTable(exec, config.schema, before.table);
        const durationMs = Date.now() - startedAt;
        const after = await selectTableStats(exec, config.schema, before.table);
        log.info(
          { table: before.table, durationMs, deadBefore: before.dead, deadAfter: after?.dead },
          'vacuum',
        );
        await noteVacuum(exec, before, after, durationMs);
      }
    } finally {
      vacuumPid = null;
      await client.end().catch(() => undefined);
    }
  }

  async function loop(): Promise<void> {
    let failures = 0;
    // Where the next pass over the messages starts; a failed pass leaves it as it was.
    let position = startPosition();
    while (!stopping) {
      if (!isLeader()) {
        await wakeup.wait(standbyPollMs);
        continue;
      }
      try {
        const startedAt = Date.now();
        const pass = await withStatementTimeout(config.pool, sessionTimeoutMs, (exec) =>
          runCleanupPass(exec, config.schema, config, bounds, position),
        );
        failures = 0;
        position = pass.position;
        const { more, scanned, sweep, position: _next, ...removed } = pass;
        if (Object.values(removed).some((n) => n > 0)) {
          log.info({ ...removed, scanned, sweep, more, durationMs: Date.now() - startedAt }, 'cleanup');
        }
        if (config.relay.vacuum) await vacuumChurnedTables();
        if (!more) await wakeup.wait(maintenanceIntervalMs);
      } catch (error) {
        if (stopping) break;
        failures += 1;
        log.error({ err: error, failures }, 'cleanup failed');
        events.emit('error', error, { component: 'maintenance' });
        await wakeup.wait(retryMs(failures));
      }
    }
  }

  return {
    start() {
      if (running !== null) return;
      stopping = false;
      running = loop();
    },
    async stop() {
      if (running === null) return;
      stopping = true;
      wakeup.nudge();
      const pid = vacuumPid;
      if (pid !== null) {
        await cancelBackend(pgExecutor(config.pool), pid).catch((error: unknown) => {
          log.warn({ err: error }, 'could not cancel the running VACUUM; waiting for it');
        });
      }
      await running;
      running = null;
    },
  };
}
