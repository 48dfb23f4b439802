// The only module that reads SQLSTATE codes.

const SQLSTATE = /^[0-9A-Z]{5}$/;
/** Prisma's own codes (P1000-P6999); Postgres's P0 class is PL/pgSQL's. */
const PRISMA_CODE = /^P[1-9][0-9]{3}$/;

/**
 * The SQLSTATE of a database error, as pg reports it (`code`) or as the data libraries wrap it: Drizzle, Knex and
 * others keep the driver's error as `cause`; TypeORM copies `code`; Prisma keeps it in
 * `meta.driverAdapterError.cause.originalCode`, and reports a deadlock or serialization failure in an interactive
 * transaction as P2034.
 */
function sqlState(error: unknown, depth = 0): string | undefined {
  if (typeof error !== 'object' || error === null || depth > 4) return undefined;
  const { code, cause, meta } = error as { code?: unknown; cause?: unknown; meta?: unknown };
  const prismaCode = typeof code === 'string' && PRISMA_CODE.test(code);
  if (typeof code === 'string' && !prismaCode && SQLSTATE.test(code)) return code;
  if (code === 'P2034') return '40001';
  const adapterError = (meta as { driverAdapterError?: { cause?: { originalCode?: unknown } } } | undefined)
    ?.driverAdapterError;
  const original = adapterError?.cause?.originalCode;
  if (typeof original === 'string') return original;
  return sqlState(cause, depth + 1);
}

/** 25P01: SAVEPOINT outside a transaction block. */
export function isNoActiveTransaction(error: unknown): boolean {
  return sqlState(error) === '25P01';
}

/** 42P01 / 3F000: the outbox tables or schema are missing (migrate() has not run). */
export function isUndefinedTableOrSchema(error: unknown): boolean {
  const state = sqlState(error);
  return state === '42P01' || state === '3F000';
}

/** 40P01 deadlock detected, 40001 serialization failure: the transaction lost a race and can simply run again. */
export function isTransactionConflict(error: unknown): boolean {
  const state = sqlState(error);
  return state === '40P01' || state === '40001';
}

/** 23505: a unique index refused a row. */
export function isUniqueViolation(error: unknown): boolean {
  return sqlState(error) === '23505';
}

/**
 * Class 22 (data exception: a value the column or cast refuses, such as NUL in text, "1.5" as bigint, an interval
 * out of range) and class 23 (integrity constraint violation): the statement failed because of the data it carries,
 * so running it again with the same data fails again, while the same statement without the offending row may
 * succeed. Connection, availability and resource errors (classes 08, 53, 57, 58, no SQLSTATE at all) are not.
 */
export function isDataError(error: unknown): boolean {
  const state = sqlState(error);
  return state !== undefined && /^2[23][0-9A-Z]{3}$/.test(state);
}

/**
 * Node's socket errors and the SQLSTATEs of a refused session: 28000 invalid authorization, 28P01 bad password,
 * 3D000 no such database; class 08 is connection exceptions. pg reports them as `code`.
 */
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ECONNRESET',
]);
const CONNECTION_SQLSTATE = /^(08[0-9A-Z]{3}|28000|28P01|3D000)$/;

/** The `code` of an error (a SQLSTATE, or a Node system error name), when it has one. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined;
  return typeof error.code === 'string' ? error.code : undefined;
}

/** The database could not be reached or refused the session. */
export function isConnectionFailure(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && (CONNECTION_CODES.has(code) || CONNECTION_SQLSTATE.test(code));
}
