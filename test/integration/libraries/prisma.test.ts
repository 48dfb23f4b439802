import { PrismaPg } from '@prisma/adapter-pg';
import { expectTypeOf, it } from 'vitest';
import type { TransactionOf } from '../../../src/index.js';
import { PrismaClient } from '../../fixtures/prisma/generated/client.js';
import { describeDataLibrary } from '../../helpers/data-library.js';

type Tx = Parameters<Parameters<PrismaClient['$transaction']>[0]>[0];

describeDataLibrary<PrismaClient, Tx>({
  name: 'Prisma 7 (driver adapter pg)',
  connect: (url) =>
    Promise.resolve(new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 5 }) })),
  close: (db) => db.$disconnect(),
  transaction: (db, fn) => db.$transaction(fn),
  insertOrder: async (db, note) => {
    await db.order.create({ data: { note } });
  },
});

it('types once() and ctx.tx as the interactive transaction client', () => {
  expectTypeOf<TransactionOf<PrismaClient>>().toEqualTypeOf<Tx>();
  expectTypeOf<TransactionOf<Tx>>().toEqualTypeOf<Tx>();
});
