import { OutboxError } from '../errors.js';
import { isStorableText } from '../idempotency-key.js';
import { assertTopic } from '../topics.js';
import type { PublishOptions } from '../types.js';

const MAX_KEY_LENGTH = 512;
// timestamptz reaches further, but these bounds keep every Date Postgres can store and reject typos.
const MIN_DELIVER_AT = Date.parse('0001-01-01T00:00:00Z');
const MAX_DELIVER_AT = Date.parse('9999-12-31T23:59:59.999Z');
const PUBLISH_OPTIONS = new Set(['key', 'headers', 'deliverAt', 'delayMs', 'dedupKey']);

/** A message checked and serialised, ready to insert. */
export interface MessageRow {
  topic: string;
  key: string | null;
  payload: string;
  headers: string;
  /** UTF-8 bytes of payload and headers, for cutting large calls into statements. */
  jsonBytes: number;
  deliverAt: Date | null;
  delayMs: number | null;
  dedupKey: string | null;
}

function toJson(
  value: unknown,
  what: string,
  code: 'OUTBOX_INVALID_PAYLOAD' | 'OUTBOX_INVALID_HEADERS' = 'OUTBOX_INVALID_PAYLOAD',
): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (error) {
    // BigInt values and cycles end here.
    throw new OutboxError(code, `${what} is not JSON-serialisable: ${(error as Error).message}`, {
      cause: error,
    });
  }
  if (json === undefined) {
    throw new OutboxError(code, `${what} is not JSON-serialisable (got ${typeof value})`);
  }
  // JSON.stringify writes \u escapes only for control characters and lone surrogates. jsonb rejects two kinds,
  // NUL (\u0000) and lone surrogates (\ud800-\udfff): fail here rather than abort the caller's transaction. An
  // escape is real only after an even number of backslashes: "\\u0000" is a backslash and the text u0000.
  const escape = json.includes('\\u')
    ? /(?:^|[^\\])(?:\\\\)*\\u(0000|d[89a-f][0-9a-f]{2})/i.exec(json)
    : null;
  if (escape !== null) {
    const problem = escape[1] === '0000' ? 'a NUL character (\\u0000)' : 'a lone UTF-16 surrogate';
    throw new OutboxError(code, `${what} contains ${problem}, which jsonb cannot store`);
  }
  return json;
}

/**
 * What an error carries in place of a value that may be anything (a payload passed in the wrong place, an object
 * holding tokens): its type, never its contents.
 */
function typeOf(value: unknown): { type: string } {
  return { type: value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value };
}

function optionalString(value: unknown, name: string, code: 'OUTBOX_INVALID_KEY' | 'OUTBOX_INVALID_OPTION') {
  if (value === undefined || value === null) return null;
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    value.length > MAX_KEY_LENGTH ||
    !isStorableText(value)
  ) {
    throw new OutboxError(
      code,
      `${name} must be a non-empty string of at most ${MAX_KEY_LENGTH} characters, without NUL characters or lone UTF-16 surrogates`,
      { value: typeof value === 'string' ? value : typeOf(value) },
    );
  }
  return value;
}

/** The headers JSON of a message published without headers (the column's default). */
export const EMPTY_HEADERS = '{}';

/** Header values often hold tokens: an error names the header and the type that is wrong, never a value. */
function headersJson(headers: unknown): string {
  if (headers === undefined || headers === null) return EMPTY_HEADERS;
  if (typeof headers !== 'object' || Array.isArray(headers)) {
    const value = typeOf(headers);
    throw new OutboxError(
      'OUTBOX_INVALID_HEADERS',
      `headers must be an object whose values are strings, got ${value.type}`,
      { value },
    );
  }
  const wrong = Object.entries(headers).find(([, v]) => typeof v !== 'string');
  if (wrong !== undefined) {
    const value = { header: wrong[0], ...typeOf(wrong[1]) };
    throw new OutboxError(
      'OUTBOX_INVALID_HEADERS',
      `headers must be an object whose values are strings; header ${JSON.stringify(value.header)} is ${value.type}`,
      { value },
    );
  }
  return toJson(headers, 'headers', 'OUTBOX_INVALID_HEADERS');
}

/** A checked row with headers added under its own (trace context): a header the caller set is kept as it is. */
export function addHeaders(row: MessageRow, added: Record<string, string>): MessageRow {
  const own = JSON.parse(row.headers) as Record<string, string>;
  const headers = JSON.stringify({ ...added, ...own });
  return {
    ...row,
    headers,
    jsonBytes: row.jsonBytes - Buffer.byteLength(row.headers) + Buffer.byteLength(headers),
  };
}

function due(options: PublishOptions): { deliverAt: Date | null; delayMs: number | null } {
  const { deliverAt, delayMs } = options;
  if (deliverAt !== undefined && delayMs !== undefined) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'Pass either deliverAt or delayMs, not both');
  }
  const time = deliverAt instanceof Date ? deliverAt.getTime() : NaN;
  if (deliverAt !== undefined && !(time >= MIN_DELIVER_AT && time <= MAX_DELIVER_AT)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'deliverAt must be a valid Date from the year 1 to 9999', {
      value: deliverAt instanceof Date ? deliverAt : typeOf(deliverAt),
    });
  }
  if (delayMs !== undefined && !(Number.isSafeInteger(delayMs) && delayMs >= 0)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'delayMs must be an integer >= 0', {
      value: typeof delayMs === 'number' ? delayMs : typeOf(delayMs),
    });
  }
  return { deliverAt: deliverAt ?? null, delayMs: delayMs ?? null };
}

/** Validates one message before anything is written; throws OutboxError on bad input. */
export function messageRow(
  topic: unknown,
  payload: unknown,
  options: PublishOptions | undefined,
  maxPayloadBytes: number,
): MessageRow {
  assertTopic(topic);
  const opts = options ?? {};
  if (typeof opts !== 'object') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'publish options must be an object', {
      value: typeOf(opts),
    });
  }
  for (const name of Object.keys(opts)) {
    if (!PUBLISH_OPTIONS.has(name)) {
      throw new OutboxError(
        'OUTBOX_UNKNOWN_OPTION',
        `Unknown publish option "${name}"; known options: ${[...PUBLISH_OPTIONS].join(', ')}`,
        { value: name },
      );
    }
  }
  const json = toJson(payload, 'payload');
  const bytes = Buffer.byteLength(json, 'utf8');
  if (bytes > maxPayloadBytes) {
    throw new OutboxError(
      'OUTBOX_PAYLOAD_TOO_LARGE',
      `payload is ${bytes} bytes as JSON, over the limit of ${maxPayloadBytes} (createOutbox({ maxPayloadBytes }))`,
      { value: bytes },
    );
  }
  const headers = headersJson(opts.headers);
  return {
    topic,
    key: optionalString(opts.key, 'key', 'OUTBOX_INVALID_KEY'),
    payload: json,
    headers,
    jsonBytes: bytes + Buffer.byteLength(headers),
    ...due(opts),
    dedupKey: optionalString(opts.dedupKey, 'dedupKey', 'OUTBOX_INVALID_OPTION'),
  };
}
