import type { Logger } from 'pino';
import { errorBackoffMs } from '../runtime/wakeup.js';
import type { Settlement } from '../sql/deliveries.js';

const MAX_PER_STATEMENT = 1000;

/**
 * Collects handler outcomes and writes them in batches (lease mode): outcomes that arrive while a write is under
 * way go into the next one, so acks cost one statement per batch, not per delivery. A failed write is retried
 * with backoff; the leases keep the deliveries safe meanwhile.
 */
export class SettleBuffer {
  private items: Settlement[] = [];
  private draining: Promise<void> | null = null;
  private closing = false;

  constructor(
    private readonly write: (items: Settlement[]) => Promise<Set<string>>,
    private readonly onWritten: (items: Settlement[], settled: Set<string>) => void,
    private readonly log: Logger,
  ) {}

  add(item: Settlement): void {
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
      const batch = this.items.splice(0, MAX_PER_STATEMENT);
      try {
        this.onWritten(batch, await this.write(batch));
        failures = 0;
      } catch (error) {
        failures += 1;
        this.log.error({ err: error, count: batch.length }, 'writing handler outcomes failed');
        if (this.closing && failures >= 3) {
          this.onWritten(batch, new Set());
          continue;
        }
        this.items.unshift(...batch);
        await new Promise((resolve) => setTimeout(resolve, errorBackoffMs(failures)));
      }
    }
    this.draining = null;
  }
}
