import type { Command } from 'commander';
import pg from 'pg';
import { pino, type Logger } from 'pino';
import { createOutbox, type Outbox, type OutboxOptions } from '../index.js';
import { errorCode } from '../db/pg-errors.js';
import { ConnectionError, messageOf, UsageError } from './failure.js';

/** The options every command takes, declared on the program. */
export interface GlobalOptions {
  databaseUrl?: string;
  schema: string;
}

/** What a command works with; the pool is the caller's executor for writes such as cancel. */
export interface Session {
  outbox: Outbox;
  pool: pg.Pool;
  schema: string;
}

/** Runs a command's work on a fresh pool and Outbox, and always closes the pool. */
export type Run = <T>(work: (session: Session) => Promise<T>, options?: Partial<OutboxOptions>) => Promise<T>;

/** An unreachable server fails the command within this, instead of pg's default of waiting forever. */
const CONNECT_TIMEOUT_MS = 5_000;

export function sessionRunner(program: Command): Run {
  return async (work, options = {}) => {
    const { databaseUrl, schema } = program.opts<GlobalOptions>();
    const connectionString = checkedUrl(databaseUrl ?? process.env.DATABASE_URL);
    const logger = cliLogger();
    const pool = new pg.Pool({ connectionString, max: 4, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    // An idle connection that dies must not crash the process; the next query reports it.
    pool.on('error', (error) => logger.warn({ err: error }, 'idle connection lost'));
    try {
      const outbox = createOutbox({ ...options, pool, schema, logger });
      await checkConnection(pool);
      return await work({ outbox, pool, schema });
    } finally {
      await pool.end();
    }
  };
}

function cliLogger(): Logger {
  // Synchronous stderr, so a warning is out before the process exits; stdout is for results only.
  return pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination({ dest: 2, sync: true }));
}

/** A URL pg can use, checked here: pg reads what `new URL()` rejects as a relative path on localhost. */
function checkedUrl(url: string | undefined): string {
  if (url === undefined || url === '') {
    throw new UsageError('no database given: set DATABASE_URL or pass --database-url <url>');
  }
  let protocol: string;
  try {
    protocol = new URL(url).protocol;
  } catch (error) {
    // Not echoed: the text may hold a password.
    throw new ConnectionError(
      'cannot parse the database URL: expected postgres://user:password@host:port/database',
      'ERR_INVALID_URL',
      error,
    );
  }
  if (!['postgres:', 'postgresql:', 'socket:'].includes(protocol)) {
    throw new ConnectionError(
      `the database URL must start with postgres:// or postgresql://, not ${protocol}//`,
      'ERR_INVALID_URL',
    );
  }
  return url;
}

/** Connects once up front, so any failure to reach the database exits 3, whatever the command does next. */
async function checkConnection(pool: pg.Pool): Promise<void> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (error) {
    const code = errorCode(error) ?? 'CONNECTION_FAILED';
    throw new ConnectionError(`cannot connect to the database: ${messageOf(error)}`, code, error);
  }
  client.release();
}
