import type { Logger } from 'pino';
import { isDataError } from '../db/pg-errors.js';
import { errorBackoffMs } from '../runtime/wakeup.js';
import type { Settlement } from '../sql/deliveries.js';

const MAX_PER_STATEMENT = 1000;
/** Statements an outcome gets on its own, all failing with a data error, before it is given up. */
const MAX_TRIES_ALONE = 3;

/** What a write left unwritten when a connection or availability error stopped it. */
interface Unwritten<T> {
  items: T[];
  error: unknown;
}

/**
 * Collects handler outcomes and writes them in batches (lease mode): outcomes that arrive while a write is under
 * way go into the next one, so acks cost one statement per batch, not per delivery. A write that fails on a
 * connection or availability error is retried whole, with backoff; the leases keep the deliveries safe meanwhile.
 * A write that fails on its data is split so that one bad outcome does not hold up the others (see writeSplitting).
 */
export class SettleBuffer<T extends Settlement = Settlement> {
  private items: T[] = [];
  private draining: Promise<void> | null = null;
  private closing = false;

  constructor(
    private readonly write: (items: T[]) => Promise<Set<string>>,
    private readonly onWritten: (items: T[], settled: Set<string>) => void,
    private readonly log: Logger,
  ) {}

  add(item: T): void {
    this.items.push(item);
    // Yield once so outcomes finishing in the same tick share the statement.
    this.draining ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.drain());
  }

  /** Writes what is buffered; on repeated failure gives up (leases expire and the deliveries come back). */
  async close(): Promise<void> {
    this.closing = true;
    this.draining ??= this.drain();
    await this.draining;
  }

  private async drain(): Promise<void> {
    let failures = 0;
    while (this.items.length > 0) {
      const unwritten = await this.writeSplitting(this.items.splice(0, MAX_PER_STATEMENT));
      if (unwritten === null) {
        failures = 0;
        continue;
      }
      failures += 1;
      this.log.error(
        { err: unwritten.error, count: unwritten.items.length },
        'writing handler outcomes failed',
      );
      if (this.closing && failures >= 3) {
        this.onWritten(unwritten.items, new Set());
        continue;
      }
      this.items.unshift(...unwritten.items);
      await new Promise((resolve) => setTimeout(resolve, errorBackoffMs(failures)));
    }
    this.draining = null;
  }

  /**
   * Writes a batch. A data error (isDataError: a value the statement cannot store) comes from some outcome in
   * it, and running the same statement again fails again: the failed part is halved, and the halves written in
   * turn, until the bad outcome is alone (about log2(batch) more statements per bad outcome, none while all is
   * well). Alone, it gets MAX_TRIES_ALONE statements, then it is given up: logged and reported as not recorded.
   * Nothing is lost: its lease expires and the delivery comes back. Any other error stops the write and returns
   * what is not written yet, to be retried whole.
   */
  private async writeSplitting(batch: T[]): Promise<Unwritten<T> | null> {
    const parts = [batch];
    let triesAlone = 0;
    let warned = false;
    for (let part = parts.shift(); part !== undefined; part = parts.shift()) {
      let settled: Set<string>;
      try {
        settled = await this.write(part);
      } catch (error) {
        if (!isDataError(error)) return { items: [part, ...parts].flat(), error };
        if (!warned) {
          warned = true;
          this.log.warn(
            { err: error, count: part.length },
            'handler outcomes refused on their data; splitting',
          );
        }
        if (part.length > 1) {
          const half = Math.ceil(part.length / 2);
          parts.unshift(part.slice(0, half), part.slice(half));
        } else if (++triesAlone < MAX_TRIES_ALONE) {
          parts.unshift(part);
        } else {
          triesAlone = 0;
          this.giveUp(part, error);
        }
        continue;
      }
      triesAlone = 0;
      this.onWritten(part, settled);
    }
    return null;
  }

  private giveUp(alone: T[], error: unknown): void {
    for (const { deliveryId, attempt, outcome } of alone) {
      this.log.error(
        { err: error, deliveryId, attempt, outcome },
        'handler outcome not recorded: the database refuses it; the delivery returns after its lease',
      );
    }
    this.onWritten(alone, new Set());
  }
}
