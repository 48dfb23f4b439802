import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { waitFor } from '../helpers/outbox.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/consumer.fixture.ts', import.meta.url));
// `--import tsx` resolves from the working directory: the repository root.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const STDERR_TAIL_CHARS = 4_000;

export interface ChildSubscription {
  name: string;
  topics: string[];
  mode: 'lease' | 'transactional';
  /**
   * block: emit `started`, then never return (a stuck handler). ack: emit `started`, return.
   * crash-on-poison: emit `started`, then SIGKILL its own process when the payload is `{ poison: true }`.
   * wait-signal: emit `started`, wait for SIGUSR2, then return (or throw when the payload is `{ fail: true }`).
   * Transactional handlers first insert a row into public.chaos_effects through ctx.tx.
   */
  behavior: 'block' | 'ack' | 'crash-on-poison' | 'wait-signal';
  leaseMs: number;
  maxAttempts?: number;
  batchSize?: number;
  concurrency?: number;
  ordered?: boolean;
}

export interface ChildConfig {
  url: string;
  relay: boolean;
  subscriptions: ChildSubscription[];
}

/** One stdout line of the fixture. */
export interface ChildEvent {
  event: string;
  pid: number;
  subscription?: string;
  id?: string;
  deliveryId?: string;
  attempt?: number;
  payload?: unknown;
  component?: string;
  message?: string;
}

export interface ConsumerChild {
  pid: number;
  events: ChildEvent[];
  alive(): boolean;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits until `count` events match; fails early, with the child's stderr, if the child dies first. */
  waitForEvents(
    label: string,
    match: (e: ChildEvent) => boolean,
    count?: number,
    timeoutMs?: number,
  ): Promise<void>;
  /** Sends the signal and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends a signal that does not end the process (SIGSTOP, SIGCONT, SIGUSR2). */
  signal(signal: NodeJS.Signals): void;
  stderr(): string;
}

const running = new Set<ChildProcess>();

/** Starts the consumer fixture in a new Node process that runs TypeScript through tsx. */
export function spawnConsumer(config: ChildConfig): ConsumerChild {
  return spawnFixture(FIXTURE, config);
}

/**
 * Starts a fixture script (a path under test/chaos/fixtures) in a new Node process; it reads `config` as JSON
 * from CHAOS_CONFIG and writes one JSON event per stdout line.
 */
export function spawnFixture(fixture: string, config: unknown): ConsumerChild {
  const proc = spawn(process.execPath, ['--import', 'tsx', fixture], {
    cwd: ROOT,
    env: { ...process.env, CHAOS_CONFIG: JSON.stringify(config) },
    stdio: ['pipe', 'pipe', 'pipe'], // stdin stays open: the child exits when it closes
  });
  running.add(proc);
  const events: ChildEvent[] = [];
  let partial = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      try {
        events.push(JSON.parse(line) as ChildEvent);
      } catch {
        events.push({ event: 'text', pid: proc.pid ?? 0, message: line });
      }
    }
  });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_TAIL_CHARS);
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => {
      running.delete(proc);
      resolve({ code, signal });
    });
  });
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  return {
    pid: proc.pid ?? 0,
    events,
    alive,
    exit,
    stderr: () => stderr,
    async waitForEvents(label, match, count = 1, timeoutMs = 20_000) {
      const outcome = await waitFor(
        label,
        () => (events.filter(match).length >= count ? 'ok' : alive() ? false : 'died'),
        timeoutMs,
      );
      if (outcome === 'died') {
        const how = proc.signalCode ?? `code ${proc.exitCode}`;
        throw new Error(`child ${proc.pid} exited (${how}) before: ${label}\n${stderr}`);
      }
    },
    signal(signal) {
      proc.kill(signal);
    },
    async kill(signal = 'SIGKILL') {
      if (alive()) proc.kill(signal);
      return exit;
    },
  };
}

/** SIGKILLs the children this module started that are still running (test cleanup). */
export async function killChildren(): Promise<void> {
  const procs = [...running];
  await Promise.all(
    procs.map(
      (p) =>
        new Promise<void>((resolve) => {
          if (p.exitCode !== null || p.signalCode !== null) return resolve();
          p.once('exit', () => resolve());
          p.kill('SIGKILL');
        }),
    ),
  );
}

/** The table transactional fixture handlers write their side effect to. No unique key, so duplicates show. */
export async function createEffectsTable(pool: pg.Pool): Promise<void> {
  await pool.query(
    `CREATE TABLE IF NOT EXISTS public.chaos_effects (
       subscription text NOT NULL,
       message_id bigint NOT NULL,
       attempt int NOT NULL
     )`,
  );
}

/** One row per delivery of a subscription, in message order, from the audit view. */
export async function deliveriesOf(
  pool: pg.Pool,
  subscription: string,
): Promise<{ message_id: string; state: string; attempt: number; last_error: string | null }[]> {
  const { rows } = await pool.query<{
    message_id: string;
    state: string;
    attempt: number;
    last_error: string | null;
  }>(
    `SELECT message_id::text, state, attempt, last_error
     FROM outbox.message_deliveries md
     WHERE subscription = $1
     ORDER BY md.message_id`,
    [subscription],
  );
  return rows;
}
