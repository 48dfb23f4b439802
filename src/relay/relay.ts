import type pg from 'pg';
import type { Logger } from 'pino';
import { connectDedicated } from '../db/dedicated-client.js';
import { pgExecutor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { OutboxEmitter } from '../events.js';
import type { ResolvedOptions } from '../options.js';
import { limitRelaySession, releaseRelayLock, tryRelayLock } from '../sql/locks.js';
import {
  BEGIN_RELAY_BATCH,
  readRelayWindow,
  relayBatch,
  type ForeignPosition,
  type RelayWindow,
} from '../sql/relay.js';
import { OutboxError } from '../errors.js';
import { createMaintenanceLoop } from '../runtime/maintenance-loop.js';
import { errorBackoffMs, Wakeup } from '../runtime/wakeup.js';
import { isUniqueViolation } from '../db/pg-errors.js';
import type { TelemetryHub } from '../telemetry/hub.js';

/*
 * Why snapshots, not ids. Message ids are taken at INSERT but rows become visible at COMMIT, so "everything
 * above the last id" skips a lower id that commits late. We follow PgQ instead: each message stores its
 * transaction id (xid8), and the relay remembers a snapshot `done` such that every message visible in it has been
 * fanned out. A batch is every message visible in a fresh snapshot `target` but not in `done`. Such a message's
 * transaction either was running at `done` (probed by xid: done's xip list, and the xids from done's xmax up to a
 * bound taken after it) or got its xid after it, and then its id is above every id visible in done (one primary-key
 * range scan): see relayBatch in sql/relay.ts, which walks the window in id order. Rows of rolled-back transactions
 * are never visible, and an unrelated
 * long-running transaction only adds its xid to the probe list: it delays nothing that has committed. Unlike an
 * xid8 cursor below pg_snapshot_xmin (watermill-sql), nothing waits for the oldest open transaction; unlike
 * claim-and-mark, the messages table is append-only (no UPDATE per message, no dead tuples).
 */

/**
 * While traffic flows the relay polls this often: a shorter wait is most of the commit-to-handler latency, and it
 * costs polls only while there is work. A batch that found messages keeps the relay in this mode for ACTIVE_FOR_MS.
 */
const ACTIVE_POLL_MS = 5;
const ACTIVE_FOR_MS = 1_000;

export interface Relay {
  start(): void;
  stop(): Promise<void>;
  isLeader(): boolean;
}

export function createRelay(config: ResolvedOptions, events: OutboxEmitter, telemetry: TelemetryHub): Relay {
  const log: Logger = config.logger.child({ component: 'relay', schema: config.schema.name });
  const { batchSize, pollIntervalMs, standbyPollMs } = config.relay;
  const wakeup = new Wakeup();
  let client: pg.Client | null = null;
  let leader = false;
  let running: Promise<void> | null = null;
  let stopping = false;

  const dropConnection = (lost: pg.Client | null = client) => {
    if (lost === null || lost !== client) return;
    client = null;
    if (leader) events.emit('relay:leader', { leader: false });
    leader = false;
    void lost.end().catch(() => undefined);
  };

  /** The database moved to another cluster: relaying on would skip every new message, so refuse until a reset. */
  function foreignPositionError(foreign: ForeignPosition, schema: SchemaName): OutboxError {
    const error = new OutboxError(
      'OUTBOX_RELAY_CLUSTER_CHANGED',
      `The relay position of schema "${schema.name}" was made in another PostgreSQL cluster ` +
        `(${foreign.xidBehind ? "this server's transaction ids are below it" : 'the system identifier changed'}): ` +
        'the database was restored from a dump, moved by logical replication or upgraded with pg_upgrade. ' +
        'No message is lost, but none is relayed until the position is reset: run `pg-outbox relay reset` ' +
        '(or outbox.resetRelay()), which relays every message that has no delivery yet.',
      { value: schema.name },
    );
    log.error({ ...foreign, code: error.code }, error.message);
    return error;
  }

  async function runBatch(conn: pg.Client, schema: SchemaName): Promise<number> {
    const exec = pgExecutor(conn);
    await conn.query(BEGIN_RELAY_BATCH);
    let relayWindow: RelayWindow | null = null;
    try {
      relayWindow = await readRelayWindow(exec, schema);
      if (relayWindow.foreign !== null) throw foreignPositionError(relayWindow.foreign, schema);
      const result = await relayBatch(exec, schema, relayWindow, batchSize);
      if (!result.stateWritten) {
        await conn.query('ROLLBACK');
        log.warn('relay state changed under this relay; rolled back its batch');
        return 0;
      }
      await conn.query('COMMIT');
      if (result.messages > 0) {
        log.debug({ messages: result.messages, deliveries: result.deliveries }, 'relay batch');
        events.emit('relay:batch', { messages: result.messages, deliveries: result.deliveries });
        telemetry.relayed(result.byTopic);
      }
      return result.messages;
    } catch (error) {
      await conn.query('ROLLBACK').catch(() => undefined);
      // Another writer relayed the same messages first (see relayBatch): nothing was written twice, and relay_state
      // has moved on. A duplicate with relay_state unchanged is a fault of its own: it takes the error path.
      if (isUniqueViolation(error) && relayWindow !== null) {
        const now = await readRelayWindow(exec, schema);
        if (now.version !== relayWindow.version) {
          log.warn('another relay wrote these deliveries first; rolled back this batch');
          return 0;
        }
      }
      throw error;
    }
  }

  async function step(): Promise<number> {
    if (client === null) {
      const { sessionTimeoutMs } = config.relay;
      const conn = await connectDedicated(config.pool, log, (lost) => dropConnection(lost), sessionTimeoutMs);
      client = conn;
      await limitRelaySession(pgExecutor(conn), {
        idleInTransactionMs: sessionTimeoutMs,
        statementMs: sessionTimeoutMs,
        // The relay is idle between polls for up to the longer of its two intervals.
        idleMs: sessionTimeoutMs + Math.max(pollIntervalMs, standbyPollMs),
      });
    }
    const conn = client;
    if (!leader) {
      leader = await tryRelayLock(pgExecutor(conn), config.schema);
      if (!leader) return -1;
      log.info('relay is active');
      events.emit('relay:leader', { leader: true });
    }
    return runBatch(conn, config.schema);
  }

  // The cleanup runs beside this loop on pool connections, and only while this relay leads.
  const maintenance = createMaintenanceLoop(config, events, () => leader);

  let lastActive = 0;
  const idleWaitMs = () =>
    Date.now() - lastActive < ACTIVE_FOR_MS ? Math.min(pollIntervalMs, ACTIVE_POLL_MS) : pollIntervalMs;

  async function loop(): Promise<void> {
    let failures = 0;
    while (!stopping) {
      try {
        const relayed = await step();
        failures = 0;
        if (relayed > 0) lastActive = Date.now();
        if (relayed === -1) await wakeup.wait(standbyPollMs);
        else if (relayed < batchSize) await wakeup.wait(idleWaitMs());
      } catch (error) {
        failures += 1;
        log.error({ err: error }, 'relay step failed');
        events.emit('error', error, { component: 'relay' });
        dropConnection();
        await wakeup.wait(errorBackoffMs(failures));
      }
    }
  }

  return {
    start() {
      if (running !== null) return;
      stopping = false;
      running = loop();
      maintenance.start();
    },
    async stop() {
      if (running === null) return;
      stopping = true;
      wakeup.nudge();
      // The maintenance ends before the lock is released: it works only while this process leads.
      await Promise.all([running, maintenance.stop()]);
      running = null;
      const conn = client;
      if (conn !== null && leader)
        await releaseRelayLock(pgExecutor(conn), config.schema).catch(() => undefined);
      dropConnection();
    },
    isLeader: () => leader,
  };
}
