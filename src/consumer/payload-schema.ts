import { DiscardError } from '../errors.js';
import type { Handler, StandardSchemaV1 } from '../types.js';

/** Longest issue list kept in a dead letter's error text. */
const MAX_ISSUES_TEXT = 2000;

/** A payload that failed the subscription's schema: dead-lettered at once, never retried. */
export class SchemaMismatchError extends DiscardError {
  override readonly name: string = 'SchemaMismatchError';
  constructor(readonly issues: readonly StandardSchemaV1.Issue[]) {
    super(`payload failed the subscription's schema check: ${issuesText(issues)}`);
    // The stack says nothing the issues do not; keep the stored error short.
    this.stack = `${this.name}: ${this.message}`;
  }
}

/**
 * Runs the schema before the handler: the handler sees the validator's output, and a payload that fails it ends
 * in the dead-letter state on its first attempt (a retry would fail the same way).
 */
export function withPayloadSchema<Ctx>(
  handler: Handler<Ctx>,
  schema: StandardSchemaV1 | undefined,
): Handler<Ctx> {
  if (schema === undefined) return handler;
  return async (message, ctx) => {
    const result = await schema['~standard'].validate(message.payload);
    if (result.issues !== undefined) throw new SchemaMismatchError(result.issues);
    await handler({ ...message, payload: result.value }, ctx);
  };
}

/** The issues as one line, `path: message` each, cut at MAX_ISSUES_TEXT characters. */
export function issuesText(issues: readonly StandardSchemaV1.Issue[]): string {
  const text = issues
    .map((issue) => {
      const path = (issue.path ?? []).map((p) => String(typeof p === 'object' ? p.key : p)).join('.');
      return path === '' ? issue.message : `${path}: ${issue.message}`;
    })
    .join('; ');
  return text.length > MAX_ISSUES_TEXT ? `${text.slice(0, MAX_ISSUES_TEXT)}…` : text;
}
