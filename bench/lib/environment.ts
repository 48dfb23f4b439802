import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';

/** Server settings that move queue numbers; read with SHOW so the file says what the run really had. */
const SETTINGS = [
  'shared_buffers',
  'synchronous_commit',
  'fsync',
  'autovacuum',
  'max_connections',
  'work_mem',
  'max_wal_size',
  'wal_level',
] as const;

export interface Environment {
  cpu: string;
  cores: number;
  memoryGiB: number;
  os: string;
  node: string;
  /** The Node of the peers in child processes: its version, null when none was found, absent when not needed. */
  childNode?: string | null;
  postgres: string;
  settings: Record<string, string>;
  packages: Record<string, string>;
  /** Packages of the peers that run in child processes (installed under npm aliases), by their real names. */
  childPackages: Record<string, string>;
}

async function packageVersion(name: string): Promise<string> {
  const require = createRequire(import.meta.url);
  try {
    const file = require.resolve(`${name}/package.json`);
    const { version } = JSON.parse(await readFile(file, 'utf8')) as { version: string };
    return version;
  } catch {
    // graphile-worker's exports map hides package.json; fall back to the installed folder.
    const file = path.join(process.cwd(), 'node_modules', name, 'package.json');
    const { version } = JSON.parse(await readFile(file, 'utf8')) as { version: string };
    return version;
  }
}

export async function readEnvironment(pool: pg.Pool, childNode?: string | null): Promise<Environment> {
  const cpus = os.cpus();
  const settings: Record<string, string> = {};
  for (const name of SETTINGS) {
    const { rows } = await pool.query<Record<string, string>>(`SHOW ${name}`);
    settings[name] = rows[0]?.[name] ?? '?';
  }
  const { rows } = await pool.query<{ server_version: string }>('SHOW server_version');
  const own = JSON.parse(await readFile(path.join(process.cwd(), 'package.json'), 'utf8')) as {
    version: string;
  };
  return {
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    ...(childNode === undefined ? {} : { childNode }),
    postgres: rows[0]?.server_version ?? '?',
    settings,
    packages: {
      'pg-outbox': own.version,
      'pg-boss': await packageVersion('pg-boss'),
      'graphile-worker': await packageVersion('graphile-worker'),
      pg: await packageVersion('pg'),
    },
    childPackages: {
      'pg-boss': await packageVersion('pg-boss-12'),
      'graphile-worker': await packageVersion('graphile-worker-0.18'),
    },
  };
}

const list = (packages: Record<string, string>) =>
  Object.entries(packages)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');

function childNodeNote(env: Environment): string {
  if (env.childNode === undefined) return '';
  return env.childNode === null
    ? ' (no Node 24 found: the peers marked Node 24 were skipped)'
    : ` (the peers marked Node 24: child processes on ${env.childNode})`;
}

export function renderEnvironment(env: Environment): string {
  return [
    `- Machine: ${env.cpu}, ${env.cores} cores, ${env.memoryGiB} GiB RAM, ${env.os}`,
    `- Node ${env.node}${childNodeNote(env)}; PostgreSQL ${env.postgres}`,
    `- Postgres settings: ${Object.entries(env.settings)
      .map(([k, v]) => `${k}=${v}`)
      .join(', ')}`,
    `- Packages: ${list(env.packages)}; on Node 24: ${list(env.childPackages)}`,
  ].join('\n');
}

/** One line per section, so a section kept from an older run still says when and where it was measured. */
export function runLine(env: Environment, repetitions: string, startedAt: Date): string {
  return (
    `Run ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC, ${env.cores}-core ${env.cpu}, ` +
    `PostgreSQL ${env.postgres}, Node ${env.node}, ${repetitions}`
  );
}
