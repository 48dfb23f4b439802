import { OutboxError } from '../errors.js';

// Lower case only, so the quoted name and the name Postgres folds an unquoted one to are the same. 50 bytes
// leaves room inside Postgres's 63-byte identifier limit for the derived NOTIFY channel name.
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,49}$/;

/** A validated, quoted schema name: the only way a configured identifier reaches SQL text. */
export interface SchemaName {
  /** The name as configured, e.g. `outbox`. */
  readonly name: string;
  /** The name quoted for SQL text, e.g. `"outbox"`. */
  readonly quoted: string;
  /** The LISTEN/NOTIFY channel that wakes this schema's consumers. */
  readonly channel: string;
}

export function schemaName(name: unknown): SchemaName {
  if (typeof name !== 'string' || !SCHEMA_NAME.test(name)) {
    throw new OutboxError(
      'OUTBOX_INVALID_SCHEMA',
      `Invalid schema name ${JSON.stringify(name)}: use 1-50 characters of a-z, 0-9 and _, not starting with a digit`,
      { value: name },
    );
  }
  if (name.startsWith('pg_') || name === 'information_schema') {
    throw new OutboxError(
      'OUTBOX_INVALID_SCHEMA',
      `Invalid schema name "${name}": pg_* and information_schema are reserved for the system`,
      {
        value: name,
      },
    );
  }
  return { name, quoted: `"${name}"`, channel: `pg_outbox.${name}` };
}

/** Quotes a LISTEN channel name derived from a validated schema name. */
export function quoteChannel(channel: string): string {
  if (!/^[a-z0-9_.]{1,63}$/.test(channel)) {
    throw new OutboxError('OUTBOX_INVALID_SCHEMA', `Invalid channel name ${JSON.stringify(channel)}`, {
      value: channel,
    });
  }
  return `"${channel}"`;
}
