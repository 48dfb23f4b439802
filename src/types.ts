import type pg from 'pg';
import type { Queryable } from './db/executor.js';

export interface PublishOptions {
  /** Ordering and partitioning key, e.g. an order id. */
  key?: string;
  /** String headers carried to the handler (trace context, content type, ...). */
  headers?: Record<string, string>;
  /** Absolute due time. Deliveries are not handed out before it. */
  deliverAt?: Date;
  /** Due time relative to the database's now() at publish, in milliseconds. */
  delayMs?: number;
  /** A publish with a (topic, dedupKey) that already exists writes nothing and returns the existing id. */
  dedupKey?: string;
}

export interface PublishInput extends PublishOptions {
  topic: string;
  payload: unknown;
}

export interface PublishResult {
  /** The message id (a bigint, as a string). */
  id: string;
  /** True when dedupKey matched an existing message and nothing was written. */
  duplicate: boolean;
}

/** What a handler receives. */
export interface OutboxMessage<Payload = unknown> {
  /** The message id, the same for every subscription. */
  id: string;
  /** This subscription's delivery id. */
  deliveryId: string;
  subscription: string;
  topic: string;
  key: string | null;
  payload: Payload;
  headers: Record<string, string>;
  /** 1 on the first hand-out, counting every later one (retries and expired leases). */
  attempt: number;
  createdAt: Date;
  /** The requested due time, or null when the message was due at once. */
  deliverAt: Date | null;
}

export type SubscriptionMode = 'lease' | 'transactional';

export interface RetryOptions {
  /** Backoff ceiling before the second attempt; doubles each attempt; the delay is drawn from its upper half. @defaultValue 1000 */
  minDelayMs?: number;
  /** Upper bound of the backoff. @defaultValue 3_600_000 (1 hour) */
  maxDelayMs?: number;
}

/** A rate limit shared by every consumer of a subscription, in every process. */
export interface RateLimit {
  /** Deliveries handed out per second (claims, retries included), across all consumers of the subscription. */
  perSecond: number;
  /** Deliveries an idle subscription may hand out at once before the rate applies. @defaultValue max(1, perSecond / 10) */
  burst?: number;
}

/** Flow-control settings, stored with the subscription and shared by all its consumers. */
export interface FlowOptions {
  /**
   * At most `perSecond` deliveries handed out per second by all consumers of the subscription together, whatever
   * their number of processes (a token bucket in the database). null: no limit. @defaultValue none
   */
  rateLimit?: RateLimit | null;
  /**
   * Unordered subscriptions: at most this many deliveries of one key in flight at once, across all consumers (rows
   * without a key are not limited). null: no limit. @defaultValue none
   */
  keyConcurrency?: number | null;
}

/** Options of declareSubscription: the topics replace the stored ones; an omitted setting keeps its stored value. */
export interface DeclareOptions extends FlowOptions {
  topics: string[];
  ordered?: boolean;
  blockKeyOnDead?: boolean;
}

export interface SubscribeOptions<Payload = unknown> extends FlowOptions {
  /** Topic names and patterns (`order.*` one segment, `order.#` one or more). */
  topics: string[];
  /**
   * `lease`: the handler runs outside a transaction while the claim's lease protects the delivery.
   * `transactional`: the handler gets `ctx.tx`, the transaction that also acks the delivery.
   * @defaultValue 'lease'
   */
  mode?: SubscriptionMode;
  /**
   * Per-key FIFO: deliveries with the same `key` are handled one at a time, in relay order; different keys run in
   * parallel. Messages without a key are not ordered. A failing head retries while its successors wait; once it is
   * dead-lettered the key moves on (see blockKeyOnDead).
   * Stored with the subscription and shared by all its consumers: omitted, the consumer runs with the stored value
   * (false when this call creates the subscription); a value that differs from the stored one makes start() fail
   * with OUTBOX_SUBSCRIPTION_CONFLICT. Change it with declareSubscription or `pg-outbox declare --ordered`.
   * @defaultValue the stored value, or false for a new subscription
   */
  ordered?: boolean;
  /**
   * Ordered subscriptions: a dead-lettered head stops its key until it is replayed. Stored with the subscription
   * like `ordered`, with the same rules. @defaultValue the stored value, or false for a new subscription
   */
  blockKeyOnDead?: boolean;
  /** Hand-outs before a delivery is dead-lettered. @defaultValue 10 */
  maxAttempts?: number;
  /**
   * The most deliveries this consumer holds at once (claimed: queued or running), and so the largest claim. Claims
   * are sized by how fast the handlers have been finishing (about 200 ms of work queued ahead, at least one
   * per slot), so quick handlers get large claims and slow ones do not hoard. @defaultValue 1000
   */
  batchSize?: number;
  /** Handlers running at once (transactional mode: transactions at once). @defaultValue 10 */
  concurrency?: number;
  /**
   * How long a claim stays exclusive without news from its consumer. Lease mode extends the leases of running
   * handlers every leaseMs / 3, so only a dead or stalled consumer loses a delivery; queued, unstarted work is
   * given back at 90% of it. Transactional mode: once a handler's transaction has locked its deliveries, the row
   * lock keeps them from other consumers past leaseMs, until COMMIT. @defaultValue 30_000
   */
  leaseMs?: number;
  /** Safety-net poll when no wake-up arrives. @defaultValue 1000 */
  pollIntervalMs?: number;
  retry?: RetryOptions;
  /**
   * A Standard Schema validator (zod, valibot, arktype, ...) for the payload. A payload that fails it is
   * dead-lettered at once, with the issues as its last error, and the handler is not called; the handler receives
   * the validator's output. @defaultValue none
   */
  schema?: StandardSchemaV1<unknown, Payload>;
  /**
   * Transactional mode: the handler transaction is opened through this data library instead of a pg client of the
   * Outbox's pool, and `ctx.tx` is that library's transaction object (Kysely Transaction, Drizzle tx, Knex trx,
   * Prisma's transaction client, TypeORM EntityManager, postgres.js transaction `sql`), so the handler writes with
   * the same library as the rest of the application. A pool, not a transaction or a lent client: each handler
   * transaction takes a connection of its own. It must reach the same database as the Outbox's pool. Prisma's
   * interactive transactions get a timeout of at least leaseMs. @defaultValue a pg client of the Outbox's pool
   */
  db?: Queryable;
}

/** The Standard Schema v1 interface (https://standardschema.dev), copied as its spec asks; no dependency. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (
      value: unknown,
    ) => StandardSchemaV1.Result<Output> | Promise<StandardSchemaV1.Result<Output>>;
    readonly types?: { readonly input: Input; readonly output: Output } | undefined;
  };
}

// eslint-disable-next-line @typescript-eslint/no-namespace -- the spec's own shape, so validators' types match
export declare namespace StandardSchemaV1 {
  type Result<Output> =
    { readonly value: Output; readonly issues?: undefined } | { readonly issues: readonly Issue[] };
  interface Issue {
    readonly message: string;
    readonly path?: readonly (PropertyKey | { readonly key: PropertyKey })[] | undefined;
  }
}

export interface LeaseContext {
  /**
   * Aborted when the work is lost. Lease mode: the lease ran out (its extensions kept failing) or another
   * consumer claimed the delivery, or stop() gave up waiting (shutdownTimeoutMs). Transactional mode: the
   * transaction's connection failed or stop() gave up waiting; not at leaseMs, since the transaction's row lock
   * keeps the delivery from other consumers however long the handler runs.
   */
  signal: AbortSignal;
}

export type OnceResult<T> = { duplicate: false; result: T } | { duplicate: true };

/** `Tx`: a pg PoolClient of the Outbox's pool, or the transaction of the library given as subscribe's `db`. */
export interface TransactionalContext<Tx = pg.PoolClient> extends LeaseContext {
  /** The transaction that also acks this delivery; do not COMMIT, ROLLBACK or release it. */
  tx: Tx;
  /**
   * Strong idempotency check inside `tx`: records (subscription, key) and runs fn only if the key is new.
   * Default key: the message id.
   */
  once<T>(key: string | undefined, fn: (tx: Tx) => Promise<T>): Promise<OnceResult<T>>;
}

export type Handler<Ctx, Payload = unknown> = (
  message: OutboxMessage<Payload>,
  ctx: Ctx,
) => Promise<void> | void;

export interface DeadLetter {
  deliveryId: string;
  messageId: string;
  topic: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  attempt: number;
  lastError: string | null;
  publishedAt: Date;
  deadAt: Date | null;
}

export interface SubscriptionStatus {
  name: string;
  topics: string[];
  /** Due now and waiting for a consumer. */
  pending: number;
  /** Waiting for a due time: delayed messages and retry backoff. */
  delayed: number;
  /** Claimed, lease still running. */
  inFlight: number;
  dead: number;
  /** Deliveries acked in the last hour. */
  doneLastHour: number;
  /** Failed attempts (handler errors and expired leases) in the last hour. */
  failedLastHour: number;
  /** Age of the oldest due delivery, in milliseconds (0 when none). */
  oldestPendingMs: number;
  ordered: boolean;
  blockKeyOnDead: boolean;
  /** The stored rate limit (null: none). */
  rateLimit: { perSecond: number; burst: number } | null;
  /** The stored limit of deliveries of one key in flight (null: none). */
  keyConcurrency: number | null;
}

export interface OutboxStatus {
  subscriptions: SubscriptionStatus[];
  relay: {
    /** Committed messages the relay has not fanned out yet. */
    backlog: number;
    /** Age of the oldest of them, in milliseconds (0 when none). */
    lagMs: number;
  };
}

/** Where a delivery is now (audit_deliveries.status). */
export type DeliveryStatus = 'pending' | 'delayed' | 'in_flight' | 'done' | 'cancelled' | 'dead';

/** One message x subscription, as audit_deliveries shows it. */
export interface DeliveryAudit {
  subscription: string;
  deliveryId: string;
  status: DeliveryStatus;
  /** Hand-outs so far (a replay starts again from 0). */
  attempts: number;
  firstAttemptAt: Date | null;
  lastAttemptAt: Date | null;
  /** When it was acked, cancelled or dead-lettered. */
  completedAt: Date | null;
  lastError: string | null;
  /** The consumer of the latest attempt: `host:pid:instance`. */
  consumer: string | null;
  relayedAt: Date;
  /** Pending, delayed and in-flight deliveries: when it is (next) due. */
  dueAt: Date | null;
}

/** One failed attempt, as audit_failures shows it. */
export interface FailureAudit {
  subscription: string;
  deliveryId: string;
  attempt: number;
  error: string | null;
  consumer: string | null;
  failedAt: Date;
}

/** A message and everything that happened to it, across subscriptions. */
export interface MessageJourney {
  message: {
    id: string;
    topic: string;
    key: string | null;
    headers: Record<string, string>;
    payload: unknown;
    publishedAt: Date;
    deliverAt: Date | null;
    /** The relay has fanned it out (to every subscription its topic matched then). */
    relayed: boolean;
    relayedAt: Date | null;
    cancelledAt: Date | null;
  };
  deliveries: DeliveryAudit[];
  /** Oldest first. */
  failures: FailureAudit[];
}

export interface ReplayOptions {
  /** Dead letters to re-queue, by delivery id. Omitted (and no `since`): every dead letter of the subscription. */
  ids?: readonly (string | number | bigint)[];
  /**
   * Re-deliver to this subscription every retained message of its topics published at or after this time, whatever
   * happened to it before (Kafka's offset reset). Runs in transactions of 1,000 messages, oldest first.
   */
  since?: Date;
  /**
   * With `since`: go on from the `next` of an earlier call (pass the same `since`). It carries where that call
   * stopped and where the replay ends (the newest message when it began), so going on never reaches messages
   * published since. A bare message id is still taken: it goes on after that id to the newest message now.
   */
  after?: string;
  /** With `since`: look at most at this many messages in this call; `next` says where to go on. */
  limit?: number;
}

export interface ReplayResult {
  /** Deliveries queued. */
  replayed: number;
  /**
   * Only with `since`: when the call stopped at `limit` with messages left, an opaque string to pass as `after` to
   * go on; else null (nothing left). A replay of dead letters returns `{ replayed }` alone.
   */
  next?: string | null;
}

export interface PurgeOptions {
  /** Count what would be removed, remove nothing. @defaultValue false */
  dryRun?: boolean;
}

/** What retention removed (or, in a dry run, would remove). */
export interface PurgeResult {
  /** Messages older than `retentionMs` whose deliveries had all finished. */
  messages: number;
  /** Their finished (done or cancelled) deliveries. */
  finishedDeliveries: number;
  /** Their failed-attempt records. */
  failures: number;
  /** Dead letters older than `deadLetterRetentionMs`. */
  deadLetters: number;
  /** Idempotency keys older than `processedRetentionMs`. */
  processedKeys: number;
}
