import type { Executor } from '../db/executor.js';

/** The session's statement_timeout, as text, to put back later. */
export async function selectStatementTimeout(exec: Executor): Promise<string> {
  const rows = await exec.query<{ previous: string }>(
    `SELECT current_setting('statement_timeout') AS previous`,
  );
  return rows[0]?.previous ?? '0';
}

/** Sets the session's statement_timeout (milliseconds as a number, or a value read by selectStatementTimeout). */
export async function setStatementTimeout(exec: Executor, value: number | string): Promise<void> {
  await exec.query(`SELECT set_config('statement_timeout', $1::text, false)`, [String(value)]);
}

/** JIT off until the end of the caller's transaction. */
export async function disableJit(exec: Executor): Promise<void> {
  await exec.query(`SELECT set_config('jit', 'off', true)`);
}
