import { toExecutor, type Executor, type Queryable } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { OutboxError } from '../errors.js';
import { isUndefinedTableOrSchema } from '../db/pg-errors.js';
import { insertMessage, insertMessages, selectDedupIds } from '../sql/messages.js';
import type { PublishInput, PublishOptions, PublishResult } from '../types.js';
import type { TelemetryHub } from '../telemetry/hub.js';
import { addHeaders, messageRow, type MessageRow } from './message-input.js';

export interface ProducerConfig {
  schema: SchemaName;
  maxPayloadBytes: number;
  telemetry: TelemetryHub;
}

/** Rounds of "insert, conflict, the other writer rolled back" before giving up. */
const MAX_DEDUP_ROUNDS = 5;

function dedupRace(): OutboxError {
  return new OutboxError(
    'OUTBOX_DEDUP_CONFLICT',
    `publish kept conflicting on dedupKey with writers that rolled back (${MAX_DEDUP_ROUNDS} rounds); retry the call`,
  );
}

/** An INSERT into a schema that migrate() never created: say so, instead of Postgres's "relation does not exist". */
function explainMissingSchema(schema: SchemaName) {
  return (error: unknown): never => {
    if (!isUndefinedTableOrSchema(error)) throw error;
    throw new OutboxError(
      'OUTBOX_NOT_MIGRATED',
      `Schema "${schema.name}" has no outbox tables: call migrate() first`,
      { cause: error, value: schema.name },
    );
  };
}

const dedupId = (topic: string, dedupKey: string) => `${topic}\u0000${dedupKey}`;

/**
 * Ids for rows that hit the dedup index. The conflicting row was committed by another transaction after our
 * INSERT's snapshot, so it is read by a new statement. If that writer rolled back instead, the key is free again
 * and the caller's insert is retried.
 */
async function existingIds(exec: Executor, s: SchemaName, rows: MessageRow[]): Promise<Map<string, string>> {
  const keys = rows.flatMap((r) => (r.dedupKey === null ? [] : [{ topic: r.topic, dedupKey: r.dedupKey }]));
  const found = await selectDedupIds(exec, s, keys);
  return new Map(found.map((f) => [dedupId(f.topic, f.dedup_key), f.id]));
}

function countPublished(telemetry: TelemetryHub, written: MessageRow[]): void {
  if (!telemetry.active) return;
  const byTopic = new Map<string, number>();
  for (const r of written) byTopic.set(r.topic, (byTopic.get(r.topic) ?? 0) + 1);
  for (const [topic, count] of byTopic) telemetry.published(topic, count);
}

export async function publish(
  config: ProducerConfig,
  db: Queryable,
  topic: string,
  payload: unknown,
  options?: PublishOptions,
): Promise<PublishResult> {
  const row = messageRow(topic, payload, options, config.maxPayloadBytes);
  const exec = toExecutor(db);
  const write = async ([checked]: MessageRow[]) => writeOne(config, exec, checked ?? row);
  return observed(config.telemetry, [row], write, (r) => [r.id]);
}

/**
 * Runs a publish call inside its observers' scope (a tracing span): its messages carry the scope's headers, and
 * the scope ends with the call's ids or its error.
 */
async function observed<T>(
  telemetry: TelemetryHub,
  rows: MessageRow[],
  write: (rows: MessageRow[]) => Promise<T>,
  idsOf: (result: T) => string[],
): Promise<T> {
  const scope = telemetry.publishing([...new Set(rows.map((r) => r.topic))], rows.length);
  if (scope === undefined) return write(rows);
  const added = scope.headers;
  try {
    const result = await write(added === undefined ? rows : rows.map((r) => addHeaders(r, added)));
    scope.end(undefined, idsOf(result));
    return result;
  } catch (error) {
    scope.end(error);
    throw error;
  }
}

async function writeOne(config: ProducerConfig, exec: Executor, row: MessageRow): Promise<PublishResult> {
  for (let round = 1; round <= MAX_DEDUP_ROUNDS; round++) {
    const id = await insertMessage(exec, config.schema, row).catch(explainMissingSchema(config.schema));
    if (id !== null) {
      config.telemetry.published(row.topic, 1);
      return { id, duplicate: false };
    }
    const existing = (await existingIds(exec, config.schema, [row])).get(
      dedupId(row.topic, row.dedupKey ?? ''),
    );
    if (existing !== undefined) return { id: existing, duplicate: true };
  }
  throw dedupRace();
}

export async function publishMany(
  config: ProducerConfig,
  db: Queryable,
  messages: readonly PublishInput[],
): Promise<PublishResult[]> {
  if (!Array.isArray(messages)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'publishMany expects an array of { topic, payload, ...options }',
    );
  }
  const rows = messages.map((m: PublishInput) => {
    if (typeof m !== 'object' || m === null) {
      throw new OutboxError(
        'OUTBOX_INVALID_OPTION',
        'publishMany expects objects of { topic, payload, ...options }',
      );
    }
    const { topic, payload, ...options } = m;
    return messageRow(topic, payload, options, config.maxPayloadBytes);
  });
  if (rows.length === 0) return [];
  const exec = toExecutor(db);
  const write = (checked: MessageRow[]) => writeMany(config, exec, checked);
  return observed(config.telemetry, rows, write, (results) => results.map((r) => r.id));
}

async function writeMany(
  config: ProducerConfig,
  exec: Executor,
  rows: MessageRow[],
): Promise<PublishResult[]> {
  if (rows.every((r) => r.dedupKey === null)) {
    // Nothing to deduplicate: every row is inserted, with ids in input order.
    const inserted = await insertMessages(exec, config.schema, rows).catch(
      explainMissingSchema(config.schema),
    );
    countPublished(config.telemetry, rows);
    return inserted.map((r) => ({ id: r.id, duplicate: false }));
  }
  // The first row of each (topic, dedupKey) in the call is inserted; later ones in the same call are duplicates.
  const seen = new Map<string, number>();
  const firstIndex = rows.map((r, i) => {
    if (r.dedupKey === null) return i;
    const id = dedupId(r.topic, r.dedupKey);
    const first = seen.get(id) ?? i;
    seen.set(id, first);
    return first;
  });
  const results = new Map<MessageRow, PublishResult>();
  let pending = rows.filter((_, i) => firstIndex[i] === i);
  for (let round = 1; pending.length > 0; round++) {
    if (round > MAX_DEDUP_ROUNDS) throw dedupRace();
    const inserted = await insertMessages(exec, config.schema, pending).catch(
      explainMissingSchema(config.schema),
    );
    const byKey = new Map<string, string>();
    const plain: bigint[] = [];
    for (const r of inserted) {
      if (r.topic !== undefined && r.dedup_key != null) byKey.set(dedupId(r.topic, r.dedup_key), r.id);
      else plain.push(BigInt(r.id));
    }
    // Rows without a dedupKey are always inserted, and identity ids ascend in input order.
    const plainIds = plain.sort((a, b) => (a < b ? -1 : 1)).map(String);
    let next = 0;
    const conflicted: MessageRow[] = [];
    for (const r of pending) {
      const id = r.dedupKey === null ? plainIds[next++] : byKey.get(dedupId(r.topic, r.dedupKey));
      if (id === undefined) conflicted.push(r);
      else results.set(r, { id, duplicate: false });
    }
    const existing =
      conflicted.length === 0
        ? new Map<string, string>()
        : await existingIds(exec, config.schema, conflicted);
    // A conflicting writer that rolled back leaves no row: those rows are inserted again.
    pending = conflicted.filter((r) => {
      const id = existing.get(dedupId(r.topic, r.dedupKey ?? ''));
      if (id !== undefined) results.set(r, { id, duplicate: true });
      return id === undefined;
    });
  }
  if (config.telemetry.active) {
    const written = rows.filter((r, i) => firstIndex[i] === i && results.get(r)?.duplicate === false);
    countPublished(config.telemetry, written);
  }
  return rows.map((r, i) => {
    const first = results.get(rows[firstIndex[i] ?? i] ?? r);
    if (first === undefined) throw new Error('publishMany lost track of a row');
    return firstIndex[i] === i ? first : { id: first.id, duplicate: true };
  });
}
