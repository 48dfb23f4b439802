import { execFile } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type pg from 'pg';
import type { Executor } from '../../src/db/executor.js';
import type { SchemaName } from '../../src/db/identifiers.js';

/** The Outbox calls the relay-backlog scenario makes: the same in this checkout and in the previous ones. */
export interface RelayOutbox {
  migrate(): Promise<void>;
  declareSubscription(name: string, options: { topics: string[] }): Promise<void>;
  publishMany(db: pg.PoolClient, messages: readonly { topic: string; payload: unknown }[]): Promise<unknown>;
  on(event: 'relay:batch', listener: (info: { messages: number; deliveries: number }) => void): void;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * One checkout's relay: its createOutbox (with its own migrations) and its relay statements, imported from its
 * src/. The relay window is opaque here: whatever readRelayWindow returned goes back into relayBatch.
 */
export interface RelayCode {
  label: string;
  /** Where the code came from: folder and commit. */
  origin: string;
  createOutbox(options: {
    pool: pg.Pool;
    schema: string;
    consumers: boolean;
    relay: { batchSize: number };
  }): RelayOutbox;
  beginBatch: string;
  readRelayWindow(exec: Executor, s: SchemaName): Promise<unknown>;
  relayBatch(exec: Executor, s: SchemaName, window: unknown, limit: number): Promise<{ messages: number }>;
}

export async function describe(root: string): Promise<string> {
  const git = (...args: string[]) => promisify(execFile)('git', ['-C', root, ...args]);
  try {
    const head = (await git('log', '-1', '--format=%h')).stdout.trim();
    const changed = (await git('status', '--porcelain', '--untracked-files=no', 'src', 'migrations')).stdout;
    return `${root} at ${head}${changed.trim() === '' ? '' : ' with uncommitted changes in src/ or migrations/'}`;
  } catch {
    return `${root} (not a git checkout)`;
  }
}

export async function loadRelayCode(root: string, label: string): Promise<RelayCode> {
  const load = (file: string) => import(pathToFileURL(path.join(root, 'src', file)).href) as Promise<unknown>;
  const index = (await load('index.js')) as Pick<RelayCode, 'createOutbox'>;
  const sql = (await load('sql/relay.js')) as {
    BEGIN_RELAY_BATCH: string;
    readRelayWindow: RelayCode['readRelayWindow'];
    relayBatch: RelayCode['relayBatch'];
  };
  return {
    label,
    origin: await describe(root),
    createOutbox: index.createOutbox,
    beginBatch: sql.BEGIN_RELAY_BATCH,
    readRelayWindow: sql.readRelayWindow,
    relayBatch: sql.relayBatch,
  };
}
