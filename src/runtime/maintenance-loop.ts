import { connectDedicated } from '../db/dedicated-client.js';
import { withStatementTimeout } from '../db/timed-connection.js';
import { setStatementTimeout } from '../sql/session.js';
import type { OutboxEmitter } from '../events.js';
import { runCleanupPass, type CleanupBounds } from '../maintenance.js';
import { pgExecutor } from '../db/executor.js';
import { cancelBackend, selectBackendPid, selectTablesToVacuum, vacuumTable } from '../sql/vacuum.js';
import type { ResolvedOptions } from '../options.js';
import { Wakeup } from './wakeup.js';

/**
 * Statements per table in one pass of the loop (100,000 rows at CLEANUP_BATCH). A larger backlog is worked off in
 * passes that follow each other at once; between them the loop logs its progress and looks at its relay again.
 */
const BATCHES_PER_PASS = 20;
/** A VACUUM of a table bloated far past the trigger can take minutes: it gets this long, not sessionTimeoutMs. */
const VACUUM_TIMEOUT_MS = 15 * 60_000;

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

  /*
   * Retention and the consumers leave dead rows behind, and only a VACUUM makes their space reusable. Autovacuum does
   * it where it is on, but with its cost delay it fell behind a drain of 5,000 msg/s (bench/RESULTS.md, retention
   * soak), and where it is off nothing does. So after each pass, each outbox table past autovacuum's trigger is
   * vacuumed here, one at a time, unless relay.vacuum is false.
   */
  async function vacuumChurnedTables(): Promise<void> {
    const tables = await selectTablesToVacuum(pgExecutor(config.pool), config.schema);
    if (tables.length === 0 || stopping) return;
    // A connection of its own, closed afterwards: a cancel from stop() can only ever reach this VACUUM, never a
    // pool connection that has gone on to run someone else's statement.
    const client = await connectDedicated(config.pool, log, () => undefined);
    const exec = pgExecutor(client);
    try {
      await setStatementTimeout(exec, VACUUM_TIMEOUT_MS);
      vacuumPid = await selectBackendPid(exec);
      for (const table of tables) {
        if (stopping || !isLeader()) return;
        const startedAt = Date.now();
        await vacuumTable(exec, config.schema, table);
        log.info({ table, durationMs: Date.now() - startedAt }, 'vacuum');
      }
    } finally {
      vacuumPid = null;
      await client.end().catch(() => undefined);
    }
  }

  async function loop(): Promise<void> {
    let failures = 0;
    let cursor = '0';
    while (!stopping) {
      if (!isLeader()) {
        await wakeup.wait(standbyPollMs);
        continue;
      }
      try {
        const startedAt = Date.now();
        const { more, messageCursor, ...result } = await withStatementTimeout(
          config.pool,
          sessionTimeoutMs,
          (exec) => runCleanupPass(exec, config.schema, config, bounds, cursor),
        );
        failures = 0;
        // A pass cut short goes on where it stopped; a finished one starts from the oldest message next time.
        cursor = more ? messageCursor : '0';
        if (Object.values(result).some((n) => n > 0)) {
          log.info({ ...result, more, durationMs: Date.now() - startedAt }, 'cleanup');
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
