// The only module that reads SQLSTATE codes.

function sqlState(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = error.code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
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
