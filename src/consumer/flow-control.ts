import type pg from 'pg';
import { inPoolTransaction } from '../db/checkout.js';
import { pgExecutor, type Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { claimDeliveries, type ClaimedRow } from '../sql/claim.js';
import { lockLimitedCandidates, returnTokens, takeTokens } from '../sql/flow.js';
import { selectSettings, setReadCommitted, type SubscriptionSettings } from '../sql/subscriptions.js';
import { claimBatch, type ClaimRequest } from './claim-batch.js';

/** How often a consumer reads its subscription's limits again: declareSubscription changes apply within this. */
const SETTINGS_REFRESH_MS = 5_000;

type Limits = Pick<SubscriptionSettings, 'rateLimit' | 'keyConcurrency'>;

/** How many deliveries a claim may take now, or how long to wait for the rate limit's tokens. */
export type Allowance = { limit: number; waitMs: 0 } | { limit: 0; waitMs: number };

/**
 * A consumer's side of its subscription's flow control: the rate limit's tokens before each claim (given back
 * when fewer deliveries were due), and the claim of a key-limited subscription, a transaction of its own. Reads
 * the stored limits every SETTINGS_REFRESH_MS, so a limit set, changed or removed by declareSubscription reaches
 * running consumers in every process.
 */
export class FlowControl {
  private limits: Limits = { rateLimit: null, keyConcurrency: null };
  private readAt = 0;

  constructor(
    private readonly pool: pg.Pool,
    private readonly schema: SchemaName,
    private readonly subscriptionId: () => number,
  ) {}

  /** A key-limited subscription: due deliveries may wait for their key. */
  get keyLimited(): boolean {
    return this.limits.keyConcurrency !== null;
  }

  /** The limits the subscription's declaration returned, at start. */
  reset(limits: Limits): void {
    this.limits = { rateLimit: limits.rateLimit, keyConcurrency: limits.keyConcurrency };
    this.readAt = Date.now();
  }

  async allow(want: number): Promise<Allowance> {
    await this.refresh();
    if (this.limits.rateLimit === null) return { limit: want, waitMs: 0 };
    const grant = await takeTokens(pgExecutor(this.pool), this.schema, this.subscriptionId(), want);
    if (grant === null) {
      // The limit was removed (or the bucket is gone): read the settings again at the next claim.
      this.readAt = 0;
      return { limit: want, waitMs: 0 };
    }
    return grant.granted > 0 ? { limit: grant.granted, waitMs: 0 } : { limit: 0, waitMs: grant.waitMs };
  }

  /** After a claim for `allowed` deliveries that returned `claimed`: the unused tokens go back to the bucket. */
  async used(allowed: number, claimed: number): Promise<void> {
    if (this.limits.rateLimit === null || claimed >= allowed) return;
    await returnTokens(pgExecutor(this.pool), this.schema, this.subscriptionId(), allowed - claimed);
  }

  /** Claims as claimBatch does, or, for a key-limited subscription, in a transaction under its keys' locks. */
  claim(
    exec: Executor,
    request: ClaimRequest,
    accept: (rows: ClaimedRow[], sentAt: number) => void,
  ): Promise<number> {
    const perKey = this.limits.keyConcurrency;
    if (perKey === null) return claimBatch(exec, this.schema, request, accept);
    return this.claimKeyLimited(request, perKey, accept);
  }

  private async claimKeyLimited(
    request: ClaimRequest,
    perKey: number,
    accept: (rows: ClaimedRow[], sentAt: number) => void,
  ): Promise<number> {
    const { backlog: _, ...params } = request;
    const sentAt = Date.now();
    const rows = await inPoolTransaction(this.pool, async (client) => {
      const tx = pgExecutor(client);
      await setReadCommitted(tx);
      const ids = await lockLimitedCandidates(tx, this.schema, {
        subscriptionId: params.subscriptionId,
        limit: params.limit,
        keyConcurrency: perKey,
      });
      if (ids.length === 0) return [];
      return claimDeliveries(tx, this.schema, { ...params, keyLimit: { ids, perKey } });
    });
    // Only once committed: a lease that did not commit must not start a handler.
    if (rows.length > 0) accept(rows, sentAt);
    return rows.length;
  }

  private async refresh(): Promise<void> {
    if (Date.now() - this.readAt < SETTINGS_REFRESH_MS) return;
    const stored = await selectSettings(pgExecutor(this.pool), this.schema, this.subscriptionId());
    this.readAt = Date.now();
    if (stored !== null) this.reset(stored);
  }
}
