import knex, { type Knex } from 'knex';
import { expectTypeOf, it } from 'vitest';
import type { TransactionOf } from '../../../src/index.js';
import { describeDataLibrary } from '../../helpers/data-library.js';

describeDataLibrary<Knex, Knex.Transaction>({
  name: 'Knex',
  connect: (url) => Promise.resolve(knex({ client: 'pg', connection: url, pool: { min: 0, max: 5 } })),
  close: (db) => db.destroy(),
  transaction: (db, fn) => db.transaction(fn),
  insertOrder: async (db, note) => {
    await db('orders').insert({ note });
  },
});

it('types once() and ctx.tx as Knex.Transaction', () => {
  expectTypeOf<TransactionOf<Knex>>().toEqualTypeOf<Knex.Transaction>();
  expectTypeOf<TransactionOf<Knex.Transaction>>().toEqualTypeOf<Knex.Transaction>();
});
