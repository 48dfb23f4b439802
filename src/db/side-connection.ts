import type pg from 'pg';
import type { Logger } from 'pino';
import { connectDedicated } from './dedicated-client.js';
import { pgExecutor, type Executor } from './executor.js';

/**
 * One connection outside the pool, for short statements that must not queue behind the pool: the lease
 * extensions of lease-mode handlers. Transactional handlers may hold every pool connection for as long as they
 * run; heartbeats sent through the pool would then wait behind them until the leases ran out and other consumers
 * took deliveries that are still being handled.
 *
 * Opened on first use and shared: pg queues concurrent statements on the one connection. After a loss (the
 * connection's 'error' or 'end', or any failed statement, since a statement that got no answer within
 * queryTimeoutMs may sit on a dead socket) the connection is dropped and the next statement opens a new one.
 * close() ends it; a later statement opens it again.
 */
export class SideConnection implements Executor {
  private connecting: Promise<pg.Client> | null = null;
  private client: pg.Client | null = null;

  constructor(
    private readonly pool: pg.Pool,
    private readonly log: Logger,
    private readonly queryTimeoutMs: number,
  ) {}

  async query<R>(text: string, params: readonly unknown[] = []): Promise<R[]> {
    const client = await this.connect();
    try {
      return await pgExecutor(client).query<R>(text, params);
    } catch (error) {
      this.drop(client);
      throw error;
    }
  }

  async close(): Promise<void> {
    const connecting = this.connecting;
    this.connecting = null;
    this.client = null;
    const client = await connecting?.catch(() => null);
    await client?.end().catch(() => undefined);
  }

  private connect(): Promise<pg.Client> {
    if (this.connecting !== null) return this.connecting;
    const connecting = connectDedicated(this.pool, this.log, (lost) => this.drop(lost), this.queryTimeoutMs);
    this.connecting = connecting;
    connecting.then(
      (client) => {
        if (this.connecting === connecting) this.client = client;
      },
      () => {
        if (this.connecting === connecting) this.connecting = null;
      },
    );
    return connecting;
  }

  private drop(lost: pg.Client): void {
    if (this.client !== lost) return;
    this.client = null;
    this.connecting = null;
    this.log.debug('side connection dropped; the next statement opens a new one');
    void lost.end().catch(() => undefined);
  }
}
