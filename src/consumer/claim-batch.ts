import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { claimDeliveries, type ClaimedRow } from '../sql/claim.js';

/** Claims for at least twice this many rows are split in two concurrent statements while a backlog lasts. */
const MIN_SPLIT_CLAIM = 100;

export interface ClaimRequest {
  subscriptionId: number;
  limit: number;
  leaseMs: number;
  maxAttempts: number;
  /** Recorded with each attempt: the consumers row of this Outbox. */
  consumer: number;
  /** The previous claim filled its limit: there is more waiting. */
  backlog: boolean;
}

/**
 * Claims up to `limit` deliveries and hands each statement's rows to `accept` with the time the claim was sent
 * (its lease is measured from there). While a backlog lasts, the claim is two concurrent statements for half each:
 * one claim stream left a database core idle between statements, and SKIP LOCKED keeps the halves disjoint. A half
 * that fails leases nothing, and the other half's rows are still accepted before the error is thrown, so they are
 * handled rather than left to their lease. Returns how many rows were claimed.
 */
export async function claimBatch(
  exec: Executor,
  schema: SchemaName,
  request: ClaimRequest,
  accept: (rows: ClaimedRow[], sentAt: number) => void,
): Promise<number> {
  const { limit, backlog, ...params } = request;
  const parts =
    backlog && limit >= 2 * MIN_SPLIT_CLAIM ? [Math.ceil(limit / 2), Math.floor(limit / 2)] : [limit];
  const sentAt = Date.now();
  const results = await Promise.allSettled(
    parts.map((part) => claimDeliveries(exec, schema, { ...params, limit: part })),
  );
  let claimed = 0;
  for (const result of results) {
    if (result.status === 'rejected' || result.value.length === 0) continue;
    claimed += result.value.length;
    accept(result.value, sentAt);
  }
  const failed = results.find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
  return claimed;
}
