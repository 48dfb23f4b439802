import type { Executor } from '../executor.js';
import type { DbAdapter } from './adapter.js';

/** The part of a TypeORM QueryRunner that pg-outbox uses. */
interface QueryRunnerLike {
  query(text: string, params: unknown[], structured: true): Promise<{ records: unknown[] }>;
  release(): Promise<void>;
  isTransactionActive: boolean;
  startTransaction(): Promise<void>;
}

interface SourceLike {
  createQueryRunner(): QueryRunnerLike;
  transaction(fn: (manager: ManagerLike) => Promise<unknown>): Promise<unknown>;
}
interface ManagerLike {
  connection: SourceLike;
  queryRunner?: QueryRunnerLike;
  transaction(fn: (manager: ManagerLike) => Promise<unknown>): Promise<unknown>;
}

const isQueryRunner = (db: object): db is QueryRunnerLike =>
  typeof (db as Partial<QueryRunnerLike>).startTransaction === 'function' &&
  typeof (db as Partial<QueryRunnerLike>).isTransactionActive === 'boolean';
const isManager = (db: object): db is ManagerLike =>
  'connection' in db && typeof (db as { getRepository?: unknown }).getRepository === 'function';
const isSource = (db: object): db is SourceLike =>
  typeof (db as Partial<SourceLike>).createQueryRunner === 'function' && 'manager' in db;

/** The query runner a statement runs on: the transaction's, else one borrowed for that statement. */
function runnerOf(db: object): { runner: QueryRunnerLike; borrowed: boolean } {
  if (isQueryRunner(db)) return { runner: db, borrowed: false };
  if (isManager(db) && db.queryRunner !== undefined) return { runner: db.queryRunner, borrowed: false };
  const source = isManager(db) ? db.connection : (db as SourceLike);
  return { runner: source.createQueryRunner(), borrowed: true };
}

function executor(db: object): Executor {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      const { runner, borrowed } = runnerOf(db);
      try {
        // The structured result: plain query() returns [rows, count] for an UPDATE ... RETURNING.
        const result = await runner.query(text, [...params], true);
        return result.records as R[];
      } finally {
        if (borrowed) await runner.release();
      }
    },
  };
}

/**
 * A TypeORM DataSource or EntityManager (a pool: a query runner per statement, transactions of their own), or a
 * QueryRunner, or the EntityManager of a transaction (lent connections: statements run on them inline).
 */
export const typeOrmAdapter: DbAdapter<object> = {
  library: 'TypeORM',
  matches: (db) => isSource(db) || isManager(db) || isQueryRunner(db),
  executor,
  inTransaction: (db) => isQueryRunner(db) || (isManager(db) && db.queryRunner !== undefined),
  async transaction<T>(db: object, fn: (exec: Executor, tx: unknown) => Promise<T>) {
    const owner = db as SourceLike | ManagerLike;
    return (await owner.transaction((manager) => fn(executor(manager), manager))) as T;
  },
};
