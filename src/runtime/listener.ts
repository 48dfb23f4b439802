import type pg from 'pg';
import type { Logger } from 'pino';
import { connectDedicated } from '../db/dedicated-client.js';
import { quoteChannel, type SchemaName } from '../db/identifiers.js';
import type { OutboxEmitter } from '../events.js';
import { errorBackoffMs, Wakeup } from './wakeup.js';

/** How often the LISTEN connection proves it is alive; a silent (half-open) connection is replaced. */
const PING_INTERVAL_MS = 10_000;
const PING_TIMEOUT_MS = 5_000;

/**
 * One LISTEN connection per Outbox. The relay sends one NOTIFY per subscription per batch, payload = the
 * subscription id; the matching consumers are nudged. While the connection is down consumers fall back to their
 * poll interval, and after every reconnect all of them are nudged, because notifications sent meanwhile are lost.
 */
export class Listener {
  private readonly targets = new Map<string, Set<Wakeup>>();
  private readonly wakeup = new Wakeup();
  private client: pg.Client | null = null;
  private running: Promise<void> | null = null;
  private stopping = false;
  private readonly log: Logger;

  constructor(
    private readonly pool: pg.Pool,
    private readonly schema: SchemaName,
    logger: Logger,
    private readonly events: OutboxEmitter,
  ) {
    this.log = logger.child({ component: 'listener', schema: schema.name });
  }

  add(subscriptionId: number, target: Wakeup): void {
    const key = String(subscriptionId);
    const set = this.targets.get(key) ?? new Set<Wakeup>();
    set.add(target);
    this.targets.set(key, set);
  }

  start(): void {
    if (this.running !== null) return;
    this.stopping = false;
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    if (this.running === null) return;
    this.stopping = true;
    this.wakeup.nudge();
    await this.running;
    this.running = null;
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
  }

  private nudgeAll(): void {
    for (const set of this.targets.values()) set.forEach((w) => w.nudge());
  }

  private drop(lost: pg.Client): void {
    if (this.client !== lost) return;
    this.client = null;
    void lost.end().catch(() => undefined);
    this.wakeup.nudge();
  }

  private async connect(): Promise<void> {
    const client = await connectDedicated(this.pool, this.log, (lost) => this.drop(lost));
    client.on('notification', (n) => {
      if (n.channel !== this.schema.channel) return;
      this.targets.get(n.payload ?? '')?.forEach((w) => w.nudge());
    });
    try {
      await client.query(`LISTEN ${quoteChannel(this.schema.channel)}`);
    } catch (error) {
      await client.end().catch(() => undefined);
      throw error;
    }
    this.client = client;
    this.nudgeAll();
    this.log.debug('listening');
  }

  private async ping(client: pg.Client): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`LISTEN connection silent for ${PING_TIMEOUT_MS} ms`)),
        PING_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([client.query('SELECT 1'), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      const current = this.client;
      try {
        if (current === null) await this.connect();
        else await this.ping(current);
        failures = 0;
        await this.wakeup.wait(PING_INTERVAL_MS);
      } catch (error) {
        failures += 1;
        this.log.warn({ err: error }, 'LISTEN connection lost; consumers poll until it is back');
        this.events.emit('error', error, { component: 'listener' });
        if (current !== null) this.drop(current);
        else if (this.client !== null) this.drop(this.client);
        await this.wakeup.wait(errorBackoffMs(failures));
      }
    }
  }
}
