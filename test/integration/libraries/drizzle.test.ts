import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import pg from 'pg';
import { expectTypeOf, it } from 'vitest';
import type { TransactionOf } from '../../../src/index.js';
import { describeDataLibrary } from '../../helpers/data-library.js';

const orders = pgTable('orders', { id: serial('id').primaryKey(), note: text('note').notNull() });

type Db = NodePgDatabase & { $client: pg.Pool };
type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];

describeDataLibrary<Db, Tx>({
  name: 'Drizzle (node-postgres)',
  connect: (url) => Promise.resolve(drizzle(new pg.Pool({ connectionString: url, max: 5 }))),
  close: (db) => db.$client.end(),
  transaction: (db, fn) => db.transaction(fn),
  insertOrder: async (db, note) => {
    await db.insert(orders).values({ note });
  },
});

it('types once() and ctx.tx as the Drizzle transaction', () => {
  expectTypeOf<TransactionOf<Db>>().toEqualTypeOf<Tx>();
  expectTypeOf<TransactionOf<Tx>>().toEqualTypeOf<Tx>();
});
