import postgres, { type Sql, type TransactionSql } from 'postgres';
import { expectTypeOf, it } from 'vitest';
import type { TransactionOf } from '../../../src/index.js';
import { describeDataLibrary } from '../../helpers/data-library.js';

describeDataLibrary<Sql, TransactionSql>({
  name: 'postgres.js',
  connect: (url) => Promise.resolve(postgres(url, { max: 5, onnotice: () => undefined })),
  close: (sql) => sql.end(),
  transaction: async (sql, fn) => sql.begin((tx) => fn(tx)),
  insertOrder: async (sql, note) => {
    await sql`INSERT INTO orders (note) VALUES (${note})`;
  },
});

it('types once() and ctx.tx as the transaction sql', () => {
  expectTypeOf<TransactionOf<Sql>>().toEqualTypeOf<TransactionSql>();
  expectTypeOf<TransactionOf<TransactionSql>>().toEqualTypeOf<TransactionSql>();
});
