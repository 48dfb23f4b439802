import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { JetStreamClient } from '@nats-io/jetstream';
import { freePort, waitForPort } from './ports.js';

export const NATS_SERVER = '/usr/sbin/nats-server';

/** True when there is no nats-server binary to start a private server with, after one line saying which tests skip. */
export function natsServerMissing(tests: string): boolean {
  if (existsSync(NATS_SERVER)) return false;
  console.warn(`${tests} skipped: no ${NATS_SERVER}`);
  return true;
}

/** A nats-server of the test's own, with JetStream on a fresh store directory, that the test may kill and restart. */
export interface PrivateNatsServer {
  url: string;
  port: number;
  storeDir: string;
  /** Kills the server and waits for its exit. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /**
   * Sends the running server a signal that need not end it. After SIGSTOP it waits until every thread is stopped:
   * the server then reads nothing and answers nothing, but its connections stay open.
   */
  signal(signal: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and store directory, and waits until it accepts connections. */
  start(): Promise<void>;
  /** Kills it (if running) and removes the store directory. */
  remove(): Promise<void>;
}

export async function startPrivateNatsServer(): Promise<PrivateNatsServer> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), 'pg-outbox-nats-'));
  let proc: ChildProcess | null = null;
  let stderr = '';

  const start = async () => {
    const p = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    p.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4_000);
    });
    proc = p;
    const exited = new Promise<never>((_, reject) =>
      p.once('exit', (code) => reject(new Error(`nats-server exited (${code}) on start:\n${stderr}`))),
    );
    await Promise.race([waitForPort(port, 20_000), exited]);
  };
  const kill = async (signal: NodeJS.Signals) => {
    const p = proc;
    proc = null;
    if (p === null || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill(signal);
    });
  };

  const signal = async (signal: NodeJS.Signals) => {
    const pid = proc?.pid;
    if (pid === undefined) throw new Error('nats-server is not running');
    process.kill(pid, signal);
    if (signal === 'SIGSTOP') await waitUntilStopped(pid);
  };

  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    kill,
    signal,
    start,
    async remove() {
      await kill('SIGKILL');
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}

/** Waits until every thread of process `pid` is in state T (stopped), from /proc (Linux). */
async function waitUntilStopped(pid: number, timeoutMs = 10_000): Promise<void> {
  const state = (stat: string) => stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const tasks = readdirSync(`/proc/${pid}/task`);
    if (tasks.every((t) => state(readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8')) === 'T')) return;
    if (Date.now() > deadline) throw new Error(`nats-server ${pid} not stopped within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * The outbox message id (header x-outbox-message-id) of every message a stream holds, read with an ordered consumer from the first sequence to the
 * last: one entry per stored copy.
 */
export async function streamOutboxIds(
  js: JetStreamClient,
  stream: string,
  stored: number,
): Promise<string[]> {
  const ids: string[] = [];
  if (stored === 0) return ids;
  const consumer = await js.consumers.get(stream);
  const messages = await consumer.consume();
  for await (const m of messages) {
    ids.push(m.headers?.get('x-outbox-message-id') ?? '');
    if (m.info.pending === 0 && ids.length >= stored) break;
  }
  await messages.close();
  return ids;
}
