import { setImmediate } from 'node:timers/promises';
import type pg from 'pg';
import type { Logger } from 'pino';
import { pgExecutor, type Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { OutboxEmitter } from '../events.js';
import type { ResolvedSubscribeOptions } from '../subscribe-options.js';
import { errorBackoffMs, Wakeup } from '../runtime/wakeup.js';
import { selectNextDueMs, type ClaimedRow } from '../sql/claim.js';
import { FlowControl } from './flow-control.js';
import { releaseDeliveries, settleDeliveries, settlementKey } from '../sql/deliveries.js';
import type { SubscriptionSettings } from '../sql/subscriptions.js';
import type { Handler, LeaseContext, TransactionalContext } from '../types.js';
import {
  doneSettlement,
  failedSettlement,
  fenceOf,
  Lease,
  toClaimed,
  type Claimed,
  type HandledOutcome,
} from './claimed.js';
import type { RetryPolicy } from './retry-policy.js';
import type { TelemetryHub } from '../telemetry/hub.js';
import { LeaseKeeper } from './lease-keeper.js';
import { SettleBuffer } from './settle-buffer.js';
import { claimSize, Throughput } from './claim-size.js';
import { runTransactionalLane } from './transactional-lane.js';

export interface ConsumerConfig {
  name: string;
  schema: SchemaName;
  pool: pg.Pool;
  /** Where lease extensions run: a connection outside the pool, shared by the Outbox's consumers. */
  leaseConnection: Executor;
  options: ResolvedSubscribeOptions;
  handler: Handler<LeaseContext> | Handler<TransactionalContext<never>>;
  logger: Logger;
  events: OutboxEmitter;
  telemetry: TelemetryHub;
}

/** When due rows exist but other consumers hold them, wait this long before claiming again. */
const BUSY_RETRY_MS = 2;
/**
 * Ordered subscriptions: due rows that wait behind their key's head are not claimable until that head settles,
 * which may take a handler's time on another consumer; poll them gently (a local settle nudges at once).
 */
const ORDERED_BUSY_RETRY_MS = 25;
/** Largest chunk one transactional-mode transaction handles. */
const MAX_TRANSACTION_CHUNK = 100;

/**
 * One subscription's consumer in this process. At most `concurrency` handlers (lease mode) or transactions
 * (transactional mode) run at once, and the consumer holds at most batchSize deliveries, running or queued. The
 * claim loop refills the local queue before it runs dry, sized by how fast the handlers have been finishing (see
 * claimLimit), so claiming overlaps handling without taking work that a busy consumer cannot start: what waits
 * in the queue too long is given back before its lease ends. Lease-mode outcomes are written in batches.
 */
export class Consumer {
  readonly wakeup = new Wakeup();
  private subscriptionId = 0;
  private consumerId = 0;
  /** The stored setting, whatever subscribe() said (the claim reads the stored blockKeyOnDead itself). */
  private ordered = false;
  private stopping = false;
  private loopDone: Promise<void> | null = null;
  private waitingForRoom = false;
  /** Aborted when stop() gives up waiting: the signal of running handler transactions. */
  private abandon = new AbortController();
  private readonly queue: Claimed[] = [];
  private readonly held = new Map<string, Claimed>();
  private readonly lanes = new Set<Promise<void>>();
  /** Deliveries inside running lanes. */
  private active = 0;
  private readonly settler: SettleBuffer<HandledOutcome>;
  private readonly keeper: LeaseKeeper;
  private readonly log: Logger;
  private readonly policy: RetryPolicy;
  private readonly flow: FlowControl;
  private readonly throughput = new Throughput();

  constructor(private readonly config: ConsumerConfig) {
    this.flow = new FlowControl(config.pool, config.schema, () => this.subscriptionId);
    this.log = config.logger.child({ component: 'consumer', subscription: config.name });
    this.policy = { maxAttempts: config.options.maxAttempts, ...config.options.retry };
    this.keeper = new LeaseKeeper(config.leaseConnection, config.schema, config.options.leaseMs, this.log);
    this.settler = new SettleBuffer<HandledOutcome>(
      (items) => settleDeliveries(pgExecutor(config.pool), config.schema, items),
      (items, settled) => this.report(items, settled),
      this.log,
    );
  }

  /** As subscribe() gave them: `ordered` and `blockKeyOnDead` undefined keep the stored settings. */
  get options(): ResolvedSubscribeOptions {
    return this.config.options;
  }

  /** consumerId: this Outbox's row in the consumers table, recorded with each attempt. */
  start(subscription: { id: number; consumerId: number } & SubscriptionSettings): void {
    if (this.loopDone !== null) return;
    this.subscriptionId = subscription.id;
    this.consumerId = subscription.consumerId;
    this.ordered = subscription.ordered;
    this.flow.reset(subscription);
    this.stopping = false;
    this.abandon = new AbortController();
    this.loopDone = this.loop();
    if (this.config.options.mode === 'lease') this.keeper.start();
  }

  /** Stops claiming, gives back unstarted work, waits for running handlers up to timeoutMs. */
  async stop(timeoutMs: number): Promise<void> {
    if (this.loopDone === null) return;
    this.stopping = true;
    this.wakeup.nudge();
    await this.loopDone;
    this.loopDone = null;
    await this.release(this.queue.splice(0));
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      Promise.all(this.lanes).then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (!drained) {
      this.log.warn(
        { inFlight: this.held.size },
        'stop timed out; unfinished deliveries return after their lease',
      );
      this.abandon.abort(new Error('consumer stopped'));
      this.keeper.abortAll(new Error('consumer stopped'));
    }
    await this.keeper.stop();
    await this.settler.close();
  }

  private async loop(): Promise<void> {
    const { pollIntervalMs, leaseMs, maxAttempts } = this.config.options;
    const exec = pgExecutor(this.config.pool);
    let failures = 0;
    let backlog = false;
    while (!this.stopping) {
      try {
        const limit = this.claimLimit();
        if (limit <= 0) {
          this.waitingForRoom = true;
          await this.wakeup.wait(pollIntervalMs);
          this.waitingForRoom = false;
          // Quick handlers end in a burst: count all of it, or the claim asks for the first free slot's worth.
          await setImmediate();
          continue;
        }
        const allowed = await this.flow.allow(limit);
        if (allowed.limit === 0) {
          await this.wakeup.wait(allowed.waitMs); // the rate limit's tokens
          continue;
        }
        const request = {
          subscriptionId: this.subscriptionId,
          limit: allowed.limit,
          leaseMs,
          maxAttempts,
          consumer: this.consumerId,
          backlog,
        };
        const claimed = await this.flow.claim(exec, request, (rows, sentAt) =>
          this.accept(rows, new Lease(rows.length, leaseMs, sentAt, (l) => this.giveBack(l))),
        );
        failures = 0;
        await this.flow.used(allowed.limit, claimed);
        backlog = claimed === allowed.limit;
        if (backlog) continue;
        const nextDueMs = await selectNextDueMs(exec, this.config.schema, this.subscriptionId);
        // Due rows that wait behind their key (ordered, or a key at its limit) free up when a delivery settles.
        const busyMs = this.ordered || this.flow.keyLimited ? ORDERED_BUSY_RETRY_MS : BUSY_RETRY_MS;
        await this.wakeup.wait(Math.min(Math.max(nextDueMs ?? pollIntervalMs, busyMs), pollIntervalMs));
      } catch (error) {
        failures += 1;
        backlog = false;
        this.log.error({ err: error }, 'claim failed');
        this.config.events.emit('error', error, { component: `consumer:${this.config.name}` });
        await this.wakeup.wait(errorBackoffMs(failures));
      }
    }
  }

  private claimLimit(): number {
    const { batchSize, concurrency, mode } = this.config.options;
    return claimSize({
      batchSize,
      concurrency,
      chunk: mode === 'lease' ? 1 : MAX_TRANSACTION_CHUNK,
      perSecond: this.throughput.perSecond(),
      queued: this.queue.length,
      active: this.active,
      running: this.lanes.size,
    });
  }

  private accept(rows: ClaimedRow[], lease: Lease): void {
    for (const row of rows) {
      if (row.state !== 'pending') {
        lease.finish();
        if (row.state === 'dead') this.reportClaimDeath(row);
        continue;
      }
      const claimed = toClaimed(this.config.name, row, lease);
      this.held.set(row.delivery_id, claimed);
      this.queue.push(claimed);
    }
    this.pump();
  }

  private pump(): void {
    const { concurrency, mode } = this.config.options;
    while (!this.stopping && this.queue.length > 0 && this.lanes.size < concurrency) {
      const size =
        mode === 'lease'
          ? 1
          : Math.min(MAX_TRANSACTION_CHUNK, Math.ceil(this.queue.length / (concurrency - this.lanes.size)));
      const chunk = this.queue.splice(0, size);
      const lane = mode === 'lease' ? this.runLease(chunk[0] as Claimed) : this.runTransactional(chunk);
      this.active += chunk.length;
      this.lanes.add(lane);
      void lane.finally(() => {
        this.throughput.finished(chunk.length);
        this.active -= chunk.length;
        this.lanes.delete(lane);
        this.pump();
        if (this.waitingForRoom) this.wakeup.nudge();
      });
    }
  }

  private forget(c: Claimed): void {
    // The same delivery can be held twice: claimed again after its lease ran out while this copy waited.
    if (this.held.get(c.message.deliveryId) !== c) return;
    this.held.delete(c.message.deliveryId);
    c.lease.finish();
  }

  /** Gives back the deliveries of a nearly expired lease that are still waiting in the queue. */
  private giveBack(lease: Lease): void {
    const stale = this.queue.filter((c) => c.lease === lease);
    if (stale.length === 0) return;
    this.queue.splice(0, this.queue.length, ...this.queue.filter((c) => c.lease !== lease));
    this.log.debug({ count: stale.length }, 'giving back queued deliveries before their lease ends');
    void this.release(stale);
  }

  private async release(unstarted: Claimed[]): Promise<void> {
    if (unstarted.length === 0) return;
    await releaseDeliveries(pgExecutor(this.config.pool), this.config.schema, unstarted.map(fenceOf)).catch(
      (error: unknown) =>
        this.log.warn({ err: error }, 'releasing unstarted deliveries failed; they return after their lease'),
    );
    unstarted.forEach((c) => this.forget(c));
  }

  private async runLease(c: Claimed): Promise<void> {
    // Its lease ran out while it waited in the queue: give it back (a no-op if another consumer holds it now).
    if (Date.now() >= c.lease.expiresAt) return this.release([c]);
    const handler = this.config.handler as Handler<LeaseContext>;
    const context = this.keeper.track(c);
    const { telemetry } = this.config;
    const startedAt = telemetry.clock();
    try {
      await telemetry.handle(c.message, async () => handler(c.message, context));
      this.settler.add(doneSettlement(c));
    } catch (error) {
      this.settler.add(failedSettlement(c, error, this.policy));
    } finally {
      telemetry.ran(c.message, startedAt);
      this.keeper.untrack(c);
    }
  }

  private async runTransactional(chunk: Claimed[]): Promise<void> {
    try {
      const result = await runTransactionalLane(
        {
          pool: this.config.pool,
          db: this.config.options.db,
          leaseMs: this.config.options.leaseMs,
          schema: this.config.schema,
          subscription: this.config.name,
          handler: this.config.handler,
          telemetry: this.config.telemetry,
          policy: this.policy,
          log: this.log,
          isStopping: () => this.stopping,
          abandoned: this.abandon.signal,
        },
        chunk,
      );
      this.report(result.settlements, result.settled);
    } catch (error) {
      this.log.error(
        { err: error, count: chunk.length },
        'handler transaction failed; deliveries return after their lease',
      );
      this.config.events.emit('error', error, { component: `consumer:${this.config.name}` });
    } finally {
      chunk.forEach((c) => this.forget(c));
    }
  }

  /** A delivery the claim dead-lettered instead of handing out: lease expired at maxAttempts, or no message. */
  private reportClaimDeath(row: ClaimedRow): void {
    const info = { subscription: this.config.name, deliveryId: row.delivery_id, attempt: row.attempt };
    this.log.warn({ ...info, reason: row.last_error }, 'delivery dead-lettered at claim');
    this.config.events.emit('delivery:dead', { ...info, error: row.last_error });
    // A delivery whose message is gone has no topic left to count it under.
    this.config.telemetry.settled(this.config.name, row.topic ?? '', 'dead');
  }

  private report(items: HandledOutcome[], settled: Set<string>): void {
    let retried = false;
    for (const item of items) {
      // Only this attempt's copy: after a retry the delivery may be held again already, on its next attempt.
      const c = this.held.get(item.deliveryId);
      if (c !== undefined && c.attempt === item.attempt) this.forget(c);
      const info = { subscription: this.config.name, deliveryId: item.deliveryId, attempt: item.attempt };
      if (!settled.has(settlementKey(item))) {
        this.log.warn(info, 'outcome not recorded: the lease had expired and the delivery was claimed again');
        continue;
      }
      this.config.telemetry.settled(this.config.name, item.topic, item.outcome);
      if (item.outcome === 'retry') {
        retried = true;
        this.log.info({ ...info, delayMs: item.delayMs }, 'delivery failed; retry scheduled');
        this.config.events.emit('delivery:retry', { ...info, delayMs: item.delayMs });
      } else if (item.outcome === 'dead') {
        this.log.warn(info, 'delivery dead-lettered');
        this.config.events.emit('delivery:dead', { ...info, error: item.error });
      }
    }
    // A retry changes the next due time, which the claim loop may have read just before this write; in an ordered
    // subscription any settled head lets the next delivery of its key become claimable, and in a key-limited one
    // any settled delivery frees a slot of its key.
    const keyWaits = this.ordered || this.flow.keyLimited;
    if (retried || (keyWaits && settled.size > 0)) this.wakeup.nudge();
  }
}
