import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { waitFor } from './db.js';

const SCRIPT = fileURLToPath(new URL('./flow-consumer.ts', import.meta.url));
// `--import tsx` resolves from the working directory: the repository root.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const STDERR_TAIL_CHARS = 4_000;
const START_TIMEOUT_MS = 60_000;

/** What one consumer process runs: handed to bench/lib/flow-consumer.ts as JSON in FLOW_CONSUMER. */
export interface FlowConsumerConfig {
  url: string;
  schema: string;
  subscription: string;
  topics: string[];
  /** How long each handler call takes (a timer); 0 for a no-op handler. */
  sleepMs: number;
  /** Record every handler call's key and interval, sent to the parent when the process stops. */
  record: boolean;
  batchSize?: number;
  concurrency?: number;
  poolMax: number;
}

/** One handler call: when it started and ended, by this machine's clock (ms since the epoch, sub-ms). */
export interface HandledInterval {
  key: string | null;
  start: number;
  end: number;
}

/** One stdout line of a consumer process. */
export type FlowConsumerEvent =
  | { event: 'ready' }
  | { event: 'started' }
  | { event: 'stopped'; handled: HandledInterval[] }
  | { event: 'error'; message: string };

interface ConsumerProcess {
  /** Waits for the first event of this name; fails, with the process's stderr, if the process exits first. */
  next<E extends FlowConsumerEvent['event']>(
    name: E,
    timeoutMs: number,
  ): Promise<Extract<FlowConsumerEvent, { event: E }>>;
  send(line: string): void;
  signal(signal: NodeJS.Signals): void;
  /** Resolves when the process has exited. */
  exit: Promise<void>;
  errors(): string[];
}

function spawnConsumer(config: FlowConsumerConfig): ConsumerProcess {
  const proc = spawn(process.execPath, ['--import', 'tsx', SCRIPT], {
    cwd: ROOT,
    env: { ...process.env, FLOW_CONSUMER: JSON.stringify(config) },
    stdio: ['pipe', 'pipe', 'pipe'], // stdin stays open: the process exits when it closes
  });
  const events: FlowConsumerEvent[] = [];
  let partial = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) if (line !== '') events.push(JSON.parse(line) as FlowConsumerEvent);
  });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_TAIL_CHARS);
  });
  const exited = () => proc.exitCode !== null || proc.signalCode !== null;
  const exit = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return {
    exit,
    async next(name, timeoutMs) {
      type Wanted = Extract<FlowConsumerEvent, { event: typeof name }>;
      let found: Wanted | undefined;
      await waitFor(
        `consumer process ${proc.pid} to say ${name}`,
        () => {
          found = events.find((e): e is Wanted => e.event === name);
          if (found === undefined && exited()) {
            throw new Error(`consumer process ${proc.pid} exited before ${name}:\n${stderr}`);
          }
          return found !== undefined;
        },
        { timeoutMs, intervalMs: 5 },
      );
      return found as Wanted;
    },
    send(line) {
      proc.stdin.write(`${line}\n`);
    },
    signal(signal) {
      if (!exited()) proc.kill(signal);
    },
    errors() {
      return events.flatMap((e) => (e.event === 'error' ? [e.message] : []));
    },
  };
}

export interface ConsumersOutcome {
  /** Every handler call of every process (empty unless `record`). */
  handled: HandledInterval[];
  /** Errors the processes' Outboxes emitted (a failed claim, ...): none in a clean run. */
  errors: string[];
}

/**
 * Runs one consumer process per config on work that is already waiting: starts them all, waits until every
 * process has its Outbox and subscription built, then lets them start together (so the first process up does not
 * drain alone), waits for `done`, and stops them with SIGTERM (each stops its Outbox, which drains, and reports).
 */
export async function runConsumers(
  configs: FlowConsumerConfig[],
  done: () => Promise<void>,
): Promise<ConsumersOutcome> {
  const procs = configs.map(spawnConsumer);
  try {
    await Promise.all(procs.map((p) => p.next('ready', START_TIMEOUT_MS)));
    for (const p of procs) p.send('go');
    await Promise.all(procs.map((p) => p.next('started', START_TIMEOUT_MS)));
    await done();
    for (const p of procs) p.signal('SIGTERM');
    const stopped = await Promise.all(procs.map((p) => p.next('stopped', START_TIMEOUT_MS)));
    await Promise.all(procs.map((p) => p.exit));
    return { handled: stopped.flatMap((s) => s.handled), errors: procs.flatMap((p) => p.errors()) };
  } finally {
    for (const p of procs) p.signal('SIGKILL');
  }
}
