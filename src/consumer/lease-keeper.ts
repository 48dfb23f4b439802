import type { Logger } from 'pino';
import type { Executor } from '../db/executor.js';
import type { SchemaName } from '../db/identifiers.js';
import { errorBackoffMs, Wakeup } from '../runtime/wakeup.js';
import { extendLeases } from '../sql/deliveries.js';
import type { LeaseContext } from '../types.js';
import { fenceOf, type Claimed } from './claimed.js';

interface Running {
  /** Created when the handler first reads ctx.signal: most handlers never do, and one per delivery costs. */
  controller: AbortController | null;
  /** Why the handler should stop, kept until the signal is created. */
  reason: Error | undefined;
  /** Lease end as this process knows it (Node clock at the sending of the last successful extension). */
  expiresAt: number;
}

/**
 * Lease mode: while a handler runs, its delivery's lease is extended every third of leaseMs, in one statement
 * for all running handlers. A live consumer therefore never loses a delivery to another consumer, however long
 * its handler takes; only a dead or stalled process does. When an extension finds the delivery claimed again, or
 * the lease runs out because extensions kept failing, the handler's ctx.signal is aborted.
 * The extensions run on `exec`, the Outbox's side connection, not on the pool: transactional handlers may hold
 * every pool connection for as long as they run, and a heartbeat queued behind them would let the lease expire.
 */
export class LeaseKeeper {
  private readonly running = new Map<Claimed, Running>();
  private readonly wakeup = new Wakeup();
  private loopDone: Promise<void> | null = null;
  private stopping = false;

  constructor(
    private readonly exec: Executor,
    private readonly schema: SchemaName,
    private readonly leaseMs: number,
    private readonly log: Logger,
  ) {}

  /** Registers a handler that starts now; returns its context, whose signal is made on first use. */
  track(c: Claimed): LeaseContext {
    const r: Running = { controller: null, reason: undefined, expiresAt: c.lease.expiresAt };
    this.running.set(c, r);
    return {
      get signal() {
        if (r.controller === null) {
          r.controller = new AbortController();
          if (r.reason !== undefined) r.controller.abort(r.reason);
        }
        return r.controller.signal;
      },
    };
  }

  untrack(c: Claimed): void {
    this.running.delete(c);
  }

  abortAll(reason: Error): void {
    for (const r of this.running.values()) abort(r, reason);
  }

  start(): void {
    if (this.loopDone !== null) return;
    this.stopping = false;
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    if (this.loopDone === null) return;
    this.stopping = true;
    this.wakeup.nudge();
    await this.loopDone;
    this.loopDone = null;
  }

  private async loop(): Promise<void> {
    const interval = Math.max(50, Math.floor(this.leaseMs / 3));
    let failures = 0;
    while (!this.stopping) {
      await this.wakeup.wait(failures === 0 ? interval : Math.min(interval, errorBackoffMs(failures)));
      if (this.running.size === 0 || this.stopping) continue;
      const items = [...this.running.keys()];
      const sentAt = Date.now();
      try {
        const extended = await extendLeases(this.exec, this.schema, items.map(fenceOf), this.leaseMs);
        failures = 0;
        for (const c of items) {
          const r = this.running.get(c);
          if (r === undefined) continue;
          if (extended.has(c.message.deliveryId)) r.expiresAt = sentAt + this.leaseMs;
          else abort(r, new Error('lease lost: the delivery was claimed by another consumer'));
        }
      } catch (error) {
        failures += 1;
        this.log.warn({ err: error, running: items.length }, 'extending leases failed');
      }
      const now = Date.now();
      for (const r of this.running.values()) {
        if (now >= r.expiresAt) abort(r, new Error(`lease of ${this.leaseMs} ms ran out`));
      }
    }
  }
}

function abort(r: Running, reason: Error): void {
  if (r.controller !== null) r.controller.abort(reason);
  else r.reason ??= reason;
}
