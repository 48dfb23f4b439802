import type pg from 'pg';
import type { Logger } from 'pino';
import { inPoolTransaction } from '../db/checkout.js';
import { pgExecutor, withTransaction, type Executor, type Queryable } from '../db/executor.js';
import { isTransactionConflict } from '../db/pg-errors.js';
import type { SchemaName } from '../db/identifiers.js';
import { lockClaimedDeliveries, releaseDeliveries, settleDeliveries } from '../sql/deliveries.js';
import { assertKeyPart } from '../idempotency-key.js';
import { insertProcessedKey } from '../sql/processed.js';
import type { Handler, OnceResult, TransactionalContext } from '../types.js';
import { doneSettlement, failedSettlement, fenceOf, type Claimed, type HandledOutcome } from './claimed.js';
import type { RetryPolicy } from './retry-policy.js';
import type { TelemetryHub } from '../telemetry/hub.js';

export interface LaneConfig {
  pool: pg.Pool;
  /** Opens the handler transactions when set (subscribe's `db`); else a client of `pool` does. */
  db: Queryable | undefined;
  leaseMs: number;
  schema: SchemaName;
  subscription: string;
  handler: Handler<TransactionalContext<never>>;
  telemetry: TelemetryHub;
  policy: RetryPolicy;
  log: Logger;
  isStopping: () => boolean;
  /** Aborted when stop() gives up waiting for running handlers (shutdownTimeoutMs). */
  abandoned: AbortSignal;
}

export interface LaneResult {
  settlements: HandledOutcome[];
  settled: Set<string>;
}

class HandlerFailed extends Error {
  constructor(
    readonly index: number,
    readonly settlement: HandledOutcome,
    cause: unknown,
  ) {
    super('handler failed', { cause });
  }
}

/**
 * Transactional mode: runs a chunk of claimed deliveries in one transaction that also settles them, so handler
 * side effects and acks commit together. Handlers run one after another on the transaction's connection.
 *
 * No savepoints on the fast path (a subtransaction per message would cost two round trips, and more than 64 in
 * one transaction overflow Postgres's subxid cache and slow every snapshot). When a handler throws, the whole
 * transaction rolls back; its failure is recorded, and the rest of the chunk runs again one transaction per
 * delivery. A handler may therefore run twice for one attempt, but its database effects commit at most once.
 *
 * A chunk holds the row locks of all its handlers until COMMIT, so two chunks that write the same rows (or
 * ctx.once keys) in opposite order can deadlock, or hit a serialization failure. Nothing is wrong with the
 * deliveries then: the chunk is rolled back and each delivery runs again alone, on the same attempt.
 *
 * ctx.signal is not tied to the claim's lease: once the transaction holds the row locks, no other consumer can
 * claim the deliveries (claims skip locked rows), however long the handlers take. It aborts only when the work is
 * lost: the transaction's connection fails, or stop() gives up waiting.
 */
export async function runTransactionalLane(config: LaneConfig, chunk: Claimed[]): Promise<LaneResult> {
  try {
    return await runInTransaction(config, chunk);
  } catch (error) {
    if (chunk.length > 1 && isTransactionConflict(error instanceof HandlerFailed ? error.cause : error)) {
      return merge(await runEachAlone(config, chunk));
    }
    if (!(error instanceof HandlerFailed)) throw error;
    const failed = await runInTransaction(config, [], [error.settlement]);
    const rest = chunk.filter((_, i) => i !== error.index);
    return merge([failed, ...(await runEachAlone(config, rest))]);
  }
}

async function runEachAlone(config: LaneConfig, chunk: Claimed[]): Promise<LaneResult[]> {
  const results: LaneResult[] = [];
  for (const c of chunk) results.push(await runInTransaction(config, [c]).catch(recordFailure(config)));
  return results;
}

function merge(results: LaneResult[]): LaneResult {
  return {
    settlements: results.flatMap((r) => r.settlements),
    settled: new Set(results.flatMap((r) => [...r.settled])),
  };
}

/** A handler that fails in a transaction of its own: record the failure in a new transaction. */
function recordFailure(config: LaneConfig) {
  return (error: unknown) => {
    if (!(error instanceof HandlerFailed)) throw error;
    return runInTransaction(config, [], [error.settlement]);
  };
}

async function runInTransaction(
  config: LaneConfig,
  chunk: Claimed[],
  failures: HandledOutcome[] = [],
): Promise<LaneResult> {
  const lost = new AbortController();
  const onConnectionError = (error: Error) => {
    config.log.warn({ err: error }, 'handler transaction connection error');
    lost.abort(new Error('the handler transaction lost its connection', { cause: error }));
  };
  const onAbandoned = () => lost.abort(config.abandoned.reason);
  if (config.abandoned.aborted) onAbandoned();
  else config.abandoned.addEventListener('abort', onAbandoned, { once: true });
  try {
    return await runOnConnection(config, chunk, failures, lost.signal, onConnectionError);
  } finally {
    config.abandoned.removeEventListener('abort', onAbandoned);
  }
}

/**
 * Runs fn in a handler transaction: on a client of the Outbox's pool (whose connection errors abort ctx.signal),
 * or through the library given as subscribe's `db` (ctx.tx is then its transaction object).
 */
function inHandlerTransaction<T>(
  config: LaneConfig,
  onConnectionError: (error: Error) => void,
  fn: (exec: Executor, tx: unknown) => Promise<T>,
): Promise<T> {
  if (config.db !== undefined) return withTransaction(config.db, fn, { timeoutMs: config.leaseMs });
  return inPoolTransaction(config.pool, (client) => fn(pgExecutor(client), client), onConnectionError);
}

function runOnConnection(
  config: LaneConfig,
  chunk: Claimed[],
  failures: HandledOutcome[],
  signal: AbortSignal,
  onConnectionError: (error: Error) => void,
): Promise<LaneResult> {
  const { schema } = config;
  return inHandlerTransaction(config, onConnectionError, async (exec, tx) => {
    const fences = [...chunk.map(fenceOf), ...failures];
    const locked = await lockClaimedDeliveries(exec, schema, fences);
    const settlements = failures.filter((f) => locked.has(f.deliveryId));
    const unstarted: Claimed[] = [];
    for (const [index, c] of chunk.entries()) {
      if (!locked.has(c.message.deliveryId)) continue; // re-claimed by another consumer after our lease ran out
      if (config.isStopping() || Date.now() >= c.lease.expiresAt) {
        unstarted.push(c);
        continue;
      }
      const startedAt = config.telemetry.clock();
      try {
        const ctx = context(config, exec, tx, c, signal);
        await config.telemetry.handle(c.message, async () => config.handler(c.message, ctx));
      } catch (error) {
        throw new HandlerFailed(index, failedSettlement(c, error, config.policy), error);
      } finally {
        config.telemetry.ran(c.message, startedAt);
      }
      settlements.push(doneSettlement(c));
    }
    if (unstarted.length > 0) await releaseDeliveries(exec, schema, unstarted.map(fenceOf));
    const settled =
      settlements.length > 0 ? await settleDeliveries(exec, schema, settlements) : new Set<string>();
    return { settlements, settled };
  });
}

function context(
  config: LaneConfig,
  exec: Executor,
  tx: unknown,
  c: Claimed,
  signal: AbortSignal,
): TransactionalContext<never> {
  // The handler was typed against the transaction object of its subscription's library (TransactionOf<db>).
  return {
    tx: tx as never,
    signal,
    async once<T>(key: string | undefined, fn: (tx: never) => Promise<T>): Promise<OnceResult<T>> {
      if (key !== undefined) assertKeyPart('ctx.once key', key);
      const fresh = await insertProcessedKey(exec, config.schema, config.subscription, key ?? c.message.id);
      if (!fresh) return { duplicate: true };
      return { duplicate: false, result: await fn(tx as never) };
    },
  };
}
