import type { GraphileOptions } from './graphile-worker.js';
import type { OursOptions } from './ours.js';
import type { PgBossOptions } from './pg-boss.js';
import type { BenchPayload } from './system.js';

/**
 * The IPC messages between a ChildSystem (bench process, Node 20) and child-host.ts (Node 24, or Node 20 for the
 * consumer processes of the scale scenario), as JSON: every
 * QueueSystem call is a `call` answered by one `result`; publish's statements come back as `query` messages that
 * the parent runs on the caller's connection, inside the caller's transaction; handler calls come as `deliveries`
 * batches. The child sends every delivery it handled before a result ahead of that result.
 */

/** The system a child hosts and its options (those JSON carries: no functions). */
export type ChildSpec = (
  | { system: 'pg-boss 10' | 'pg-boss 12'; options: PgBossOptions }
  | { system: 'graphile-worker 0.17' | 'graphile-worker 0.18'; options: GraphileOptions }
  | { system: 'pg-outbox'; options: Pick<OursOptions, 'url' | 'label' | 'schema' | 'mode' | 'profile'> }
) & {
  /**
   * The most connections any one pg pool of the child may have; unset: the system's own sizes. The systems size
   * their pools for one process, and several consumer processes share the server's max_connections.
   */
  poolCap?: number;
};

/** An OutgoingMessage as JSON carries it: the due time in epoch ms (JSON would turn a Date into a string). */
export interface WireMessage {
  payload: BenchPayload;
  deliverAtMs?: number;
}

export interface WireError {
  message: string;
  /** SQLSTATE of a failed query, which the peers' own error handling reads. */
  code?: string;
}

/** One handled delivery: the payload, then the child's preciseNow() and Date.now() at the handler call. */
export type WireDelivery = [payload: BenchPayload, preciseMs: number, dateMs: number];

export type Call =
  | { method: 'reset' | 'start' | 'stop' | 'unacked' | 'close' }
  | { method: 'prepare'; expected: number }
  | { method: 'publish'; messages: WireMessage[] };

export type ToChild =
  | { type: 'init'; spec: ChildSpec }
  | ({ type: 'call'; id: number } & Call)
  | { type: 'query-result'; id: number; rows?: unknown[]; error?: WireError };

export type FromChild =
  | { type: 'ready'; settings: string; publishPath: string; node: string }
  | { type: 'result'; id: number; value?: number; error?: WireError }
  | { type: 'deliveries'; batch: WireDelivery[] }
  /** A statement of the publish call `call`, for the parent to run on that call's client. */
  | { type: 'query'; id: number; call: number; text: string; values: unknown[] };

export function toWireError(error: unknown): WireError {
  if (!(error instanceof Error)) return { message: String(error) };
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? { message: error.message, code } : { message: error.message };
}

export function fromWireError(error: WireError, context?: string): Error {
  const message = context === undefined ? error.message : `${context}: ${error.message}`;
  return Object.assign(new Error(message), error.code ? { code: error.code } : {});
}
