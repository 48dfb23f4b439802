import type pg from 'pg';

/** The payload every system carries: a sequence number, and the stamps the latency scenarios need. */
export interface BenchPayload {
  n: number;
  /** Wall-clock ms (sub-ms precision) taken just before the producer's COMMIT. */
  stamp?: number;
  /** Wall-clock ms at which the message is due. */
  dueMs?: number;
}

export interface OutgoingMessage {
  payload: BenchPayload;
  /** Due time for delayed delivery; absent means due at once. */
  deliverAt?: Date;
}

/**
 * When a handler ran in another process (a peer in a Node 24 child): both of that process's wall clocks, read as
 * the handler was called, so that a figure stamped in one process and read in another needs no IPC time.
 */
export interface HandledAt {
  /** performance.timeOrigin + performance.now(), as preciseNow() in db.ts. */
  preciseMs: number;
  /** Date.now(). */
  dateMs: number;
}

/** Called once per delivery; `at` is set only when the handler ran in another process. */
export type DeliveryHandler = (payload: BenchPayload, at?: HandledAt) => void;

/**
 * What the peers' publish paths need of the caller's connection: queries. pg.PoolClient has it; a child
 * process's stand-in forwards each query to the parent's client over IPC.
 */
export interface SqlClient {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
  /**
   * True when the client takes a query before the previous one has finished and runs them in call order (the
   * child's stand-in: sending the next one at once saves an IPC round trip). pg.PoolClient does not: pg 8
   * deprecates overlapping queries on a client, so callers chain them (inCallOrder in db.ts).
   */
  readonly pipelines?: boolean;
}

/**
 * One queue system under test, behind the same few calls, so that every scenario treats pg-outbox, its peers and
 * the raw-SQL ceilings alike. Each system lives in its own schema, dropped and recreated by reset(), so
 * repetitions are independent.
 */
export interface QueueSystem {
  /** Row label in the tables. */
  readonly label: string;
  /** Its consumer side and settings, for RESULTS.md (without the label). */
  readonly settings: string;
  /** Its publish call(s) in the caller's transaction, for RESULTS.md (without the label). */
  readonly publishPath: string;
  /** Drops and recreates the system's schema (and queues or subscriptions); stops anything still running. */
  reset(): Promise<void>;
  /**
   * Writes messages inside the caller's open transaction on `client`. One message uses the system's single-message
   * call; several use its batch call, which is what a user publishing many in one transaction would pick.
   */
  publish(client: pg.PoolClient, messages: readonly OutgoingMessage[]): Promise<void>;
  /** Work to do after publishing and before the clock starts (pg-outbox: relay everything first). */
  prepare?(expected: number): Promise<void>;
  /** Starts the consumers with the system's tuned settings; resolves once they are running. */
  start(handler: DeliveryHandler): Promise<void>;
  /** Stops the consumers; in-flight work finishes. */
  stop(): Promise<void>;
  /** Deliveries not acknowledged yet, read from the database. */
  unacked(): Promise<number>;
  /** Stops everything, drops the schema and ends the system's own pools. */
  close(): Promise<void>;
}

/** A peer system whose publish needs only SqlClient's query, so that it can run in a child process. */
export interface PeerSystem extends QueueSystem {
  publish(client: SqlClient, messages: readonly OutgoingMessage[]): Promise<void>;
}
