import { CommanderError } from 'commander';
import { errorCode, isConnectionFailure, isUndefinedTableOrSchema } from '../db/pg-errors.js';
import { isOutboxError, type OutboxErrorCode } from '../index.js';
import { ExitCode, type ExitCodeValue } from './exit-codes.js';

/** Bad or missing arguments that commander cannot see (mutually exclusive options, a time that does not parse). */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The database could not be reached or refused us; `cause` is what pg or Node threw. */
export class ConnectionError extends Error {
  override readonly name = 'ConnectionError';
  readonly code: string;
  constructor(message: string, code: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.code = code;
  }
}

export interface Failure {
  exitCode: ExitCodeValue;
  /** One line, without the `pg-outbox: ` prefix. */
  message: string;
  code: string;
}

const OUTBOX_EXIT_CODES: Partial<Record<OutboxErrorCode, ExitCodeValue>> = {
  OUTBOX_UNKNOWN_SUBSCRIPTION: ExitCode.unknownSubscription,
  OUTBOX_UNKNOWN_MESSAGE: ExitCode.unknownId,
  OUTBOX_REPLAY_BEYOND_RETENTION: ExitCode.replayBeyondRetention,
  // The database failed the migration, not the caller's input.
  OUTBOX_MIGRATION_FAILED: ExitCode.unexpected,
};

/** An error's text; Node's AggregateError (every address of a host refused) has an empty message of its own. */
export function messageOf(error: unknown): string {
  if (error instanceof AggregateError && error.message === '') {
    return error.errors.map((e) => messageOf(e)).join('; ');
  }
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/** What to print and which exit code to use for an error that ended a command. */
export function describeFailure(error: unknown, schema: string): Failure {
  if (error instanceof CommanderError) {
    return { exitCode: ExitCode.usage, message: messageOf(error).replace(/^error: /, ''), code: 'USAGE' };
  }
  if (error instanceof UsageError) return { exitCode: ExitCode.usage, message: error.message, code: 'USAGE' };
  if (error instanceof ConnectionError) {
    return { exitCode: ExitCode.cannotConnect, message: error.message, code: error.code };
  }
  if (isOutboxError(error, 'OUTBOX_NOT_MIGRATED') || isUndefinedTableOrSchema(error)) {
    return {
      exitCode: ExitCode.notMigrated,
      message: `schema "${schema}" has no pg-outbox tables: run pg-outbox migrate`,
      code: 'OUTBOX_NOT_MIGRATED',
    };
  }
  if (isOutboxError(error)) {
    const exitCode = OUTBOX_EXIT_CODES[error.code] ?? ExitCode.invalidInput;
    return { exitCode, message: messageOf(error), code: error.code };
  }
  const code = errorCode(error);
  if (isConnectionFailure(error)) {
    return {
      exitCode: ExitCode.cannotConnect,
      message: `cannot connect to the database: ${messageOf(error)}`,
      code: code ?? 'CONNECTION_FAILED',
    };
  }
  return { exitCode: ExitCode.unexpected, message: messageOf(error), code: code ?? 'UNEXPECTED' };
}
