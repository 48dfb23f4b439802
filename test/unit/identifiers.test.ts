import { describe, expect, it } from 'vitest';
import { OutboxError } from '../../src/index.js';
import { quoteChannel, schemaName } from '../../src/db/identifiers.js';
import { thrown } from '../helpers/thrown.js';

describe('schemaName', () => {
  it.each(['outbox', 'billing_outbox', '_outbox', 'a', 'a1', 'outbox_2024', 'select', 'x'.repeat(50)])(
    'accepts %j and quotes it as is',
    (name) => {
      expect(schemaName(name)).toEqual({ name, quoted: `"${name}"`, channel: `pg_outbox.${name}` });
    },
  );

  it('keeps the channel of the longest name within the 63-byte identifier limit', () => {
    const { channel } = schemaName('x'.repeat(50));
    expect(Buffer.byteLength(channel)).toBeLessThanOrEqual(63);
    expect(quoteChannel(channel)).toBe(`"${channel}"`);
  });

  it.each([
    ['empty', ''],
    ['a double quote', 'out"box'],
    ['a quote-escape attempt', 'x"; DROP TABLE y; --'],
    ['a single quote', "out'box"],
    ['a percent sign', 'out%box'],
    ['a dollar sign', 'out$box'],
    ['a dot', 'billing.outbox'],
    ['a space', 'out box'],
    ['a hyphen', 'out-box'],
    ['a semicolon', 'outbox;'],
    ['a backslash', 'out\\box'],
    ['a NUL character', 'out\u0000box'],
    ['unicode letters', 'ausgänge'],
    ['an emoji', 'outbox_📦'],
    ['upper case', 'Outbox'],
    ['all upper case', 'OUTBOX'],
    ['a leading digit', '1outbox'],
    ['51 bytes', 'x'.repeat(51)],
    ['63 bytes', 'x'.repeat(63)],
    ['the pg_ prefix', 'pg_outbox'],
    ['only the pg_ prefix', 'pg_'],
  ])('rejects a name with %s with OUTBOX_INVALID_SCHEMA and the offending value', (_, name) => {
    const error = thrown(() => schemaName(name));
    expect(error).toBeInstanceOf(OutboxError);
    expect(error).toMatchObject({ code: 'OUTBOX_INVALID_SCHEMA', value: name });
  });

  it.each([undefined, null, 42, ['outbox'], { name: 'outbox' }])(
    'rejects the non-string %j with OUTBOX_INVALID_SCHEMA',
    (name) => {
      expect(thrown(() => schemaName(name))).toMatchObject({ code: 'OUTBOX_INVALID_SCHEMA' });
    },
  );

  it('says how to fix an invalid name', () => {
    expect((thrown(() => schemaName('Outbox')) as Error).message).toMatch(/a-z, 0-9 and _/);
    expect((thrown(() => schemaName('pg_x')) as Error).message).toMatch(
      /pg_\* and information_schema are reserved/,
    );
    expect((thrown(() => schemaName('information_schema')) as Error).message).toMatch(
      /reserved for the system/,
    );
  });
});

describe('quoteChannel', () => {
  it('quotes a derived channel name', () => {
    expect(quoteChannel('pg_outbox.billing_outbox')).toBe('"pg_outbox.billing_outbox"');
  });

  it.each(['', 'pg_outbox."x', 'pg_outbox.X', 'pg outbox', 'c'.repeat(64)])(
    'rejects the channel %j with OUTBOX_INVALID_SCHEMA',
    (channel) => {
      expect(thrown(() => quoteChannel(channel))).toMatchObject({ code: 'OUTBOX_INVALID_SCHEMA' });
    },
  );
});
