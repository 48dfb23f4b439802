import { OutboxError } from './errors.js';

/**
 * Checks an idempotency scope or key before it reaches SQL. Scope and key share one btree entry (at most about
 * 2,700 bytes) and text cannot hold NUL, so both would otherwise fail inside the caller's transaction.
 */
export function assertKeyPart(name: string, value: unknown): asserts value is string {
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    Buffer.byteLength(value) > 1024 ||
    value.includes('\0')
  ) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `${name} must be a non-empty string of at most 1024 bytes (UTF-8), without NUL characters`,
      { value },
    );
  }
}
