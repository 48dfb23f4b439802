import { DataSource, EntitySchema, type EntityManager } from 'typeorm';
import { expectTypeOf, it } from 'vitest';
import type { TransactionOf } from '../../../src/index.js';
import { describeDataLibrary } from '../../helpers/data-library.js';

interface Order {
  id: number;
  note: string;
}
const OrderEntity = new EntitySchema<Order>({
  name: 'Order',
  tableName: 'orders',
  columns: { id: { type: Number, primary: true, generated: true }, note: { type: String } },
});

describeDataLibrary<DataSource, EntityManager>({
  name: 'TypeORM',
  connect: (url) =>
    new DataSource({ type: 'postgres', url, entities: [OrderEntity], extra: { max: 5 } }).initialize(),
  close: (db) => db.destroy(),
  transaction: (db, fn) => db.transaction(fn),
  insertOrder: async (db, note) => {
    const manager = db instanceof DataSource ? db.manager : db;
    await manager.insert(OrderEntity, { note });
  },
});

it('types once() and ctx.tx as the EntityManager', () => {
  expectTypeOf<TransactionOf<DataSource>>().toEqualTypeOf<EntityManager>();
});
