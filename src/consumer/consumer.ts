import type pg from 'pg';
import type { Logger } from 'pino';
import { pgExecutor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import type { OutboxEmitter } from '../events.js';
import type { ResolvedSubscribeOptions } from '../options.js';
import { errorBackoffMs, Wakeup } from '../runtime/wakeup.js';
import {
  claimDeliveries,
  lockClaimedDeliveries,
  releaseDeliveries,
  selectNextDueMs,
  settleDeliveries,
  type ClaimedRow,
  type Settlement,
} from '../sql/deliveries.js';
import { insertProcessedKey } from '../sql/processed.js';
import type { Handler, LeaseContext, OnceResult, TransactionalContext } from '../types.js';
import { doneSettlement, failedSettlement, fenceOf, toClaimed, type Claimed } from './claimed.js';
import { SettleBuffer } from './settle-buffer.js';

export interface ConsumerConfig {
  name: string;
  schema: SchemaName;
  pool: pg.Pool;
  options: ResolvedSubscribeOptions;
  handler: Handler<LeaseContext> | Handler<TransactionalContext>;
  logger: Logger;
  events: OutboxEmitter;
}

/** When due rows exist but other consumers hold them, wait this long before claiming again. */
const BUSY_RETRY_MS = 2;

/** One subscription's consumer in this process: claims, runs handlers with bounded concurrency, settles. */
export class Consumer {
  readonly wakeup = new Wakeup();
  private subscriptionId = 0;
  private stopping = false;
  private loopDone: Promise<void> | null = null;
  private waitingForRoom = false;
  private readonly queue: Claimed[] = [];
  private readonly held = new Map<string, Claimed>();
  private readonly lanes = new Set<Promise<void>>();
  private readonly settler: SettleBuffer;
  private readonly log: Logger;

  constructor(private readonly config: ConsumerConfig) {
    this.log = config.logger.child({ component: 'consumer', subscription: config.name });
    this.settler = new SettleBuffer(
      (items) => settleDeliveries(pgExecutor(config.pool), config.schema, items),
      (items, settled) => this.afterSettle(items, settled),
      this.log,
    );
  }

  get filter() {
    return this.config.options.filter;
  }

  start(subscriptionId: number): void {
    if (this.loopDone !== null) return;
    this.subscriptionId = subscriptionId;
    this.stopping = false;
    this.loopDone = this.loop();
  }

  /** Stops claiming, gives back unstarted work, waits for running handlers up to timeoutMs. */
  async stop(timeoutMs: number): Promise<void> {
    if (this.loopDone === null) return;
    this.stopping = true;
    this.wakeup.nudge();
    await this.loopDone;
    this.loopDone = null;
    await this.release(this.queue.splice(0));
    const drained = await Promise.race([
      Promise.all(this.lanes).then(() => true),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref()),
    ]);
    if (!drained) {
      this.log.warn(
        { inFlight: this.held.size },
        'stop timed out; unfinished deliveries return after their lease',
      );
      for (const c of this.held.values()) c.abort.abort(new Error('consumer stopped'));
    }
    await this.settler.close();
  }

  private async loop(): Promise<void> {
    const { batchSize, concurrency, pollIntervalMs, leaseMs, maxAttempts } = this.config.options;
    const exec = pgExecutor(this.config.pool);
    let failures = 0;
    while (!this.stopping) {
      try {
        const room = batchSize - this.held.size;
        if (room <= 0 || this.queue.length >= concurrency) {
          this.waitingForRoom = true;
          await this.wakeup.wait(pollIntervalMs);
          this.waitingForRoom = false;
          continue;
        }
        const rows = await claimDeliveries(exec, this.config.schema, {
          subscriptionId: this.subscriptionId,
          limit: room,
          leaseMs,
          maxAttempts,
        });
        failures = 0;
        this.accept(rows);
        if (rows.length === room) continue;
        const nextDueMs = await selectNextDueMs(exec, this.config.schema, this.subscriptionId);
        await this.wakeup.wait(
          Math.min(Math.max(nextDueMs ?? pollIntervalMs, BUSY_RETRY_MS), pollIntervalMs),
        );
      } catch (error) {
        failures += 1;
        this.log.error({ err: error }, 'claim failed');
        this.config.events.emit('error', error, { component: `consumer:${this.config.name}` });
        await this.wakeup.wait(errorBackoffMs(failures));
      }
    }
  }

  private accept(rows: ClaimedRow[]): void {
    for (const row of rows) {
      if (row.state === 'dead') {
        this.log.warn(
          { deliveryId: row.delivery_id, attempt: row.attempt },
          'delivery dead-lettered after lease expiry',
        );
        this.config.events.emit('delivery:dead', {
          subscription: this.config.name,
          deliveryId: row.delivery_id,
          attempt: row.attempt,
          error: 'lease expired at maxAttempts',
        });
      }
      if (row.state !== 'pending') continue;
      const claimed = toClaimed(this.config.name, row, this.config.options.leaseMs);
      this.held.set(row.delivery_id, claimed);
      this.queue.push(claimed);
    }
    this.pump();
  }

  private pump(): void {
    const { concurrency, mode } = this.config.options;
    while (!this.stopping && this.queue.length > 0 && this.lanes.size < concurrency) {
      const size = mode === 'lease' ? 1 : Math.ceil(this.queue.length / (concurrency - this.lanes.size));
      const chunk = this.queue.splice(0, size);
      const lane = mode === 'lease' ? this.runLease(chunk[0] as Claimed) : this.runTransactional(chunk);
      this.lanes.add(lane);
      void lane.finally(() => {
        this.lanes.delete(lane);
        this.pump();
        if (this.waitingForRoom) this.wakeup.nudge();
      });
    }
  }

  private forget(c: Claimed): void {
    clearTimeout(c.leaseTimer);
    this.held.delete(c.message.deliveryId);
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
    const handler = this.config.handler as Handler<LeaseContext>;
    try {
      await handler(c.message, { signal: c.abort.signal });
      this.settler.add(doneSettlement(c));
    } catch (error) {
      this.settler.add(failedSettlement(c, error, this.policy()));
    }
  }

  private async runTransactional(chunk: Claimed[]): Promise<void> {
    const { pool, schema } = this.config;
    let client: pg.PoolClient | null = null;
    let broken = false;
    const onError = (error: Error) => {
      broken = true;
      this.log.warn({ err: error }, 'handler transaction connection error');
    };
    try {
      client = await pool.connect();
      client.on('error', onError);
      const exec = pgExecutor(client);
      await client.query('BEGIN');
      const locked = await lockClaimedDeliveries(exec, schema, chunk.map(fenceOf));
      const settlements: Settlement[] = [];
      const unstarted: Claimed[] = [];
      for (const c of chunk) {
        if (!locked.has(c.message.deliveryId)) continue; // lease lost to another consumer: not ours any more
        if (this.stopping) unstarted.push(c);
        else settlements.push(await this.handleInSavepoint(client, c));
      }
      if (unstarted.length > 0) await releaseDeliveries(exec, schema, unstarted.map(fenceOf));
      const settled =
        settlements.length > 0 ? await settleDeliveries(exec, schema, settlements) : new Set<string>();
      await client.query('COMMIT');
      this.report(settlements, settled);
    } catch (error) {
      broken = true;
      await client?.query('ROLLBACK').catch(() => undefined);
      this.log.error(
        { err: error, count: chunk.length },
        'handler transaction failed; deliveries return after their lease',
      );
      this.config.events.emit('error', error, { component: `consumer:${this.config.name}` });
    } finally {
      client?.off('error', onError);
      client?.release(broken);
      chunk.forEach((c) => this.forget(c));
    }
  }

  private async handleInSavepoint(client: pg.PoolClient, c: Claimed): Promise<Settlement> {
    const handler = this.config.handler as Handler<TransactionalContext>;
    const ctx: TransactionalContext = {
      tx: client,
      signal: c.abort.signal,
      once: <T>(key: string | undefined, fn: (tx: pg.PoolClient) => Promise<T>) =>
        this.once(client, key ?? c.message.id, fn),
    };
    await client.query('SAVEPOINT pg_outbox_delivery');
    try {
      await handler(c.message, ctx);
      await client.query('RELEASE SAVEPOINT pg_outbox_delivery');
      return doneSettlement(c);
    } catch (error) {
      await client.query('ROLLBACK TO SAVEPOINT pg_outbox_delivery');
      return failedSettlement(c, error, this.policy());
    }
  }

  private async once<T>(client: pg.PoolClient, key: string, fn: (tx: pg.PoolClient) => Promise<T>) {
    const fresh = await insertProcessedKey(pgExecutor(client), this.config.schema, this.config.name, key);
    if (!fresh) return { duplicate: true } satisfies OnceResult<T>;
    return { duplicate: false, result: await fn(client) } satisfies OnceResult<T>;
  }

  private policy() {
    const { maxAttempts, retry } = this.config.options;
    return { maxAttempts, ...retry };
  }

  private afterSettle(items: Settlement[], settled: Set<string>): void {
    for (const item of items) {
      const c = this.held.get(item.deliveryId);
      if (c !== undefined) this.forget(c);
    }
    this.report(items, settled);
  }

  private report(items: Settlement[], settled: Set<string>): void {
    for (const item of items) {
      const info = { subscription: this.config.name, deliveryId: item.deliveryId, attempt: item.attempt };
      if (!settled.has(item.deliveryId)) {
        this.log.warn(info, 'outcome not recorded: the lease had expired and the delivery was claimed again');
      } else if (item.outcome === 'retry') {
        this.log.info({ ...info, delayMs: item.delayMs }, 'delivery failed; retry scheduled');
        this.config.events.emit('delivery:retry', { ...info, delayMs: item.delayMs });
      } else if (item.outcome === 'dead') {
        this.log.warn(info, 'delivery dead-lettered');
        this.config.events.emit('delivery:dead', { ...info, error: item.error });
      }
    }
    // A retry changes the next due time, which the claim loop may have read just before this write.
    const retried = items.some((i) => i.outcome === 'retry' && settled.has(i.deliveryId));
    if (this.waitingForRoom || retried) this.wakeup.nudge();
  }
}
