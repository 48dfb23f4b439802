import type pg from 'pg';
import { listDeadLetters, readStatus, replay } from '../admin.js';
import { pgExecutor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { discardDeadLetters } from '../discard-dead-letters.js';
import { readJourney } from '../journey.js';
import { selectMessagesByKey } from '../sql/journey.js';
import { isId } from '../admin.js';
import { OutboxError } from '../errors.js';
import type { AdminData } from './handler.js';

/** Most messages a key search lists. */
const KEY_MATCHES = 100;

/** The admin page's reads and writes on one Outbox's schema, through the same functions as the API. */
export function adminData(pool: pg.Pool, s: SchemaName): AdminData {
  const exec = pgExecutor(pool);
  return {
    schema: s.name,
    status: () => readStatus(pool, s),
    deadLetters: (subscription, query) => listDeadLetters(exec, s, subscription, query),
    replay: async (subscription, ids) =>
      (await replay(pool, s, subscription, ids === null ? {} : { ids })).replayed,
    discard: async (subscription, ids) =>
      (await discardDeadLetters(pool, s, subscription, ids === null ? { all: true } : { ids })).discarded,
    journey(id) {
      if (!isId(id)) {
        throw new OutboxError('OUTBOX_UNKNOWN_MESSAGE', `No message ${id} in schema "${s.name}"`, {
          value: id,
        });
      }
      return readJourney(exec, s, id);
    },
    findByKey: (key, scan) => selectMessagesByKey(exec, s, { key, scan, limit: KEY_MATCHES }),
  };
}
