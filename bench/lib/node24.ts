import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** Where the bench installs its own Node 24, once: kept with node_modules, so `npm ci` starts it afresh. */
const CACHE_DIR = path.join(ROOT, 'node_modules', '.cache', 'pg-outbox-bench', 'node24');
/** The npm package that ships Node's binary for this platform (what the `node` package installs). */
const PACKAGE = `node-${process.platform}-${process.arch}`;
/** pg-boss 12 needs Node 22.12, graphile-worker 0.18 Node 22.18. */
const MINIMUM = [22, 18] as const;

/** A Node binary for the peers that no longer run on the bench's own Node 20. */
export interface Node24 {
  path: string;
  /** 'v24.22.3'. */
  version: string;
  /** 24: the labels say "(Node 24)". */
  major: number;
}

async function probe(binary: string): Promise<Node24> {
  const { stdout } = await run(binary, ['--version'], { timeout: 10_000 });
  const version = stdout.trim();
  const [major = 0, minor = 0] = version.replace(/^v/, '').split('.').map(Number);
  if (major < MINIMUM[0] || (major === MINIMUM[0] && minor < MINIMUM[1])) {
    throw new Error(`${binary} is Node ${version}; the newest peers need ${MINIMUM.join('.')} or newer`);
  }
  return { path: binary, version, major };
}

async function installed(): Promise<Node24> {
  const binary = path.join(CACHE_DIR, 'node_modules', PACKAGE, 'bin', 'node');
  const present = await access(binary).then(
    () => true,
    () => false,
  );
  if (!present) {
    await run(
      'npm',
      [
        'install',
        '--prefix',
        CACHE_DIR,
        '--no-save',
        '--no-audit',
        '--no-fund',
        '--loglevel=error',
        `${PACKAGE}@24`,
      ],
      { timeout: 300_000 },
    );
  }
  return probe(binary);
}

/**
 * Finds the Node that runs pg-boss 12 and graphile-worker 0.18: the binary in BENCH_NODE24 when set, else the npm
 * package node-<platform>-<arch>@24 installed once into node_modules/.cache. Resolves to null, after one log line
 * that says why, when neither works: the scenarios then run without those peers.
 */
export async function findNode24(log: (line: string) => void): Promise<Node24 | null> {
  const fromEnv = process.env['BENCH_NODE24'];
  const source = fromEnv ? `BENCH_NODE24=${fromEnv}` : `${PACKAGE}@24 in ${path.relative(ROOT, CACHE_DIR)}`;
  try {
    const node = fromEnv ? await probe(fromEnv) : await installed();
    log(`Node ${node.version} for pg-boss 12 and graphile-worker 0.18 (child processes): ${node.path}`);
    return node;
  } catch (error) {
    const reason = error instanceof Error ? error.message.split('\n')[0] : String(error);
    log(`no Node 24 (${source}: ${reason}): pg-boss 12 and graphile-worker 0.18 are skipped`);
    return null;
  }
}
