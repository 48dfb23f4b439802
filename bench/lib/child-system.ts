import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  fromWireError,
  toWireError,
  type Call,
  type ChildSpec,
  type FromChild,
  type ToChild,
} from './child-protocol.js';
import { inCallOrder } from './db.js';
import type { GraphileOptions } from './graphile-worker.js';
import type { Node24 } from './node24.js';
import type { PgBossOptions } from './pg-boss.js';
import type { DeliveryHandler, QueueSystem, SqlClient } from './system.js';

const HOST = path.join(path.dirname(fileURLToPath(import.meta.url)), 'child-host.ts');
/** tsx's loader, by absolute URL, so the child finds it whatever its working directory. */
const TSX = import.meta.resolve('tsx');
const READY_TIMEOUT_MS = 60_000;
const EXIT_TIMEOUT_MS = 30_000;

interface Pending {
  resolve: (value: number | undefined) => void;
  reject: (error: Error) => void;
}

/**
 * A QueueSystem whose implementation runs in a child process on `node` (another Node: pg-boss 12 and
 * graphile-worker 0.18 need 22+, the bench runs on 20; or this one: the consumer processes of the scale scenario),
 * on the same PostgreSQL. Every call goes over IPC (child-protocol.ts); the child starts at the first call.
 * publish() keeps the caller's transaction: the child's statements run here, on the caller's client. Handlers run
 * in the child, which stamps each call with its own clocks (HandledAt): those read the same wall clock as this
 * process, so latencies need no IPC time. Each call costs an IPC round trip (well under a millisecond), and publish
 * one more for every statement that waits on the one before (pg-boss's publish() sends its statements for the
 * subscribed queues together, and they travel together).
 */
export function childSystem(node: Pick<Node24, 'path'>, spec: ChildSpec, label: string): QueueSystem {
  let started: Promise<ChildProcess> | null = null;
  let exited: Promise<void> = Promise.resolve();
  let info: Extract<FromChild, { type: 'ready' }> | null = null;
  let handler: DeliveryHandler | null = null;
  let nextCall = 0;
  const calls = new Map<number, Pending>();
  const clients = new Map<number, SqlClient>();

  const runQuery = (child: ChildProcess, m: Extract<FromChild, { type: 'query' }>) => {
    const reply = (answer: Omit<Extract<ToChild, { type: 'query-result' }>, 'type' | 'id'>) =>
      child.send({ type: 'query-result', id: m.id, ...answer } satisfies ToChild);
    const client = clients.get(m.call);
    if (client === undefined) return reply({ error: { message: `no open publish call ${m.call}` } });
    client.query(m.text, m.values).then(
      (result) => reply({ rows: result.rows }),
      (error: unknown) => reply({ error: toWireError(error) }),
    );
  };
  const onMessage = (child: ChildProcess, m: FromChild) => {
    if (m.type === 'deliveries') {
      for (const [payload, preciseMs, dateMs] of m.batch) handler?.(payload, { preciseMs, dateMs });
    } else if (m.type === 'query') {
      runQuery(child, m);
    } else if (m.type === 'result') {
      const call = calls.get(m.id);
      calls.delete(m.id);
      if (m.error) call?.reject(fromWireError(m.error, label));
      else call?.resolve(m.value);
    }
  };

  const spawn = (): Promise<ChildProcess> => {
    const child = fork(HOST, [], {
      execPath: node.path,
      execArgv: ['--import', TSX],
      // The child's output goes to stderr with the bench's progress lines: stdout carries only the tables.
      stdio: ['ignore', 2, 2, 'ipc'],
      serialization: 'json',
    });
    exited = new Promise((resolve) => child.once('exit', () => resolve()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${label}: child process not ready after ${READY_TIMEOUT_MS} ms`));
        child.kill();
      }, READY_TIMEOUT_MS);
      child.on('message', (m: FromChild) => {
        if (m.type !== 'ready') return onMessage(child, m);
        clearTimeout(timer);
        info = m;
        resolve(child);
      });
      const fail = (error: Error) => {
        clearTimeout(timer);
        reject(error);
        for (const call of calls.values()) call.reject(error);
        calls.clear();
      };
      child.once('exit', (code, signal) => {
        started = null;
        fail(new Error(`${label}: child process exited (${signal ?? `code ${code}`})`));
      });
      // A failed spawn, or a send to a child that has just died (EPIPE): the exit that follows says the rest.
      child.on('error', (error) => fail(new Error(`${label}: child process: ${error.message}`)));
      child.send({ type: 'init', spec } satisfies ToChild);
    });
  };

  const call = async (c: Call, client?: SqlClient): Promise<number | undefined> => {
    started ??= spawn();
    const child = await started;
    const id = nextCall++;
    if (client !== undefined) clients.set(id, inCallOrder(client));
    try {
      return await new Promise<number | undefined>((resolve, reject) => {
        calls.set(id, { resolve, reject });
        child.send({ type: 'call', id, ...c } satisfies ToChild);
      });
    } finally {
      clients.delete(id);
    }
  };

  return {
    label,
    get settings() {
      return info === null
        ? `${spec.system} (not started)`
        : `${info.settings}; in a child process on Node ${info.node}, calls over IPC`;
    },
    get publishPath() {
      return info === null
        ? `${spec.system} (not started)`
        : `${info.publishPath} (run on the caller's client)`;
    },
    async reset() {
      await call({ method: 'reset' });
    },
    async publish(client, messages) {
      const wire = messages.map((m) => ({
        payload: m.payload,
        ...(m.deliverAt ? { deliverAtMs: m.deliverAt.getTime() } : {}),
      }));
      await call({ method: 'publish', messages: wire }, client);
    },
    async prepare(expected) {
      await call({ method: 'prepare', expected });
    },
    async start(h) {
      handler = h;
      await call({ method: 'start' });
    },
    async stop() {
      await call({ method: 'stop' });
    },
    async unacked() {
      const n = await call({ method: 'unacked' });
      if (n === undefined) throw new Error(`${label}: unacked() answered no count`);
      return n;
    },
    async close() {
      // A child never started has no schema to drop.
      const child = await started?.catch(() => null);
      if (!child) return;
      await call({ method: 'close' });
      const timer = setTimeout(() => child.kill(), EXIT_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * pg-boss 12 in a child process on `node`, with the options of pgBossSystem; labelled "pg-boss 12 (Node 24)", in a
 * schema of its own so that it never drops pg-boss 10's.
 */
export function pgBoss12System(node: Node24, options: PgBossOptions): QueueSystem {
  const label = options.label ?? `pg-boss 12 (Node ${node.major})`;
  const spec: ChildSpec = { system: 'pg-boss 12', options: { schema: 'bench_pgboss12', ...options, label } };
  return childSystem(node, spec, label);
}

/** graphile-worker 0.18 in a child process on `node`, with the options of graphileWorkerSystem. */
export function graphileWorker018System(node: Node24, options: GraphileOptions): QueueSystem {
  const label = options.label ?? `graphile-worker 0.18 (Node ${node.major})`;
  const spec: ChildSpec = {
    system: 'graphile-worker 0.18',
    options: { schema: 'bench_graphile018', ...options, label },
  };
  return childSystem(node, spec, label);
}
