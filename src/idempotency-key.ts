import { OutboxError } from './errors.js';

/** A lone high surrogate (no low one after it) or a lone low surrogate (no high one before it). */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * Text Postgres stores as given: no NUL, and no lone surrogate, which the driver's UTF-8 encoding would turn into
 * U+FFFD, so two different keys (a string cut in the middle of an emoji) would become the same stored key.
 */
export function isStorableText(value: string): boolean {
  return !value.includes('\0') && !LONE_SURROGATE.test(value);
}

/**
 * Checks an idempotency scope or key before it reaches SQL. Scope and key share one btree entry (at most about
 * 2,700 bytes) and text cannot hold NUL, so both would otherwise fail inside the caller's transaction.
 */
export function assertKeyPart(name: string, value: unknown): asserts value is string {
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    Buffer.byteLength(value) > 1024 ||
    !isStorableText(value)
  ) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `${name} must be a non-empty string of at most 1024 bytes (UTF-8), without NUL characters or lone UTF-16 surrogates`,
      { value },
    );
  }
}
