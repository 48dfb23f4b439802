import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, chownSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { waitFor } from './outbox.js';
import { freePort, waitForPort } from './ports.js';

const run = promisify(execFile);
export const RABBITMQ_SERVER = '/usr/sbin/rabbitmq-server';
export const RABBITMQCTL = '/usr/sbin/rabbitmqctl';

/**
 * A RabbitMQ node of the test's own (its own node name, ports and data directory), so that restarting it breaks
 * no other test file using the machine's broker in the same run.
 */
export interface PrivateRabbitNode {
  url: string;
  port: number;
  /** `rabbitmqctl stop_app`: the broker application and its listener stop, the Erlang node stays up. */
  stopApp(): Promise<void>;
  /** `rabbitmqctl start_app`, then waits until the listener accepts connections. */
  startApp(): Promise<void>;
  /** Stops the node and removes its data directory. */
  remove(): Promise<void>;
}

/** Why this machine cannot run a private RabbitMQ node for the test, or undefined when it can. */
export function privateRabbitNodeUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root (the node needs the Erlang cookie)';
  for (const binary of [RABBITMQ_SERVER, RABBITMQCTL]) {
    try {
      accessSync(binary, constants.X_OK);
    } catch {
      return `no ${binary}`;
    }
  }
  return undefined;
}

export async function startPrivateRabbitNode(): Promise<PrivateRabbitNode> {
  const [port, distPort] = [await freePort(), await freePort()];
  const base = mkdtempSync(join(tmpdir(), 'pg-outbox-rabbit-'));
  const node = `chaos${port}@localhost`;
  writeFileSync(join(base, 'rabbitmq.conf'), `listeners.tcp.local = 127.0.0.1:${port}\n`);
  writeFileSync(join(base, 'enabled_plugins'), '[].\n');
  writeFileSync(join(base, 'rabbitmq-env.conf'), '');
  // Started as root, rabbitmq-server runs the node as the rabbitmq user: the directory must be that user's.
  const owner = (flag: string) => Number(execFileSync('id', [flag, 'rabbitmq'], { encoding: 'utf8' }).trim());
  chownSync(base, owner('-u'), owner('-g'));
  for (const file of ['rabbitmq.conf', 'enabled_plugins', 'rabbitmq-env.conf']) {
    chownSync(join(base, file), owner('-u'), owner('-g'));
  }
  const env = {
    ...process.env,
    RABBITMQ_NODENAME: node,
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    RABBITMQ_CONFIG_FILE: join(base, 'rabbitmq.conf'),
    RABBITMQ_CONF_ENV_FILE: join(base, 'rabbitmq-env.conf'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(base, 'enabled_plugins'),
    RABBITMQ_MNESIA_BASE: join(base, 'mnesia'),
    RABBITMQ_LOG_BASE: join(base, 'log'),
    ERL_EPMD_ADDRESS: '127.0.0.1',
  };
  let stderr = '';
  const proc: ChildProcess = spawn(RABBITMQ_SERVER, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-4_000);
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const ctl = (...args: string[]) => run(RABBITMQCTL, ['-n', node, ...args], { env, timeout: 60_000 });

  const remove = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      await ctl('stop').catch(() => proc.kill('SIGKILL'));
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }
    rmSync(base, { recursive: true, force: true });
  };
  try {
    // await_startup fails at once while the node has not registered with epmd yet: ask again until it answers.
    await waitFor(
      `RabbitMQ node ${node} started`,
      () => {
        if (proc.exitCode !== null || proc.signalCode !== null) {
          throw new Error(`rabbitmq-server exited on start:\n${stderr}`);
        }
        return ctl('await_startup', '--timeout', '10').then(() => true);
      },
      60_000,
      500,
    );
    await waitForPort(port, 20_000);
  } catch (error) {
    await remove();
    throw error;
  }
  return {
    url: `amqp://guest:guest@127.0.0.1:${port}`,
    port,
    async stopApp() {
      await ctl('stop_app');
    },
    async startApp() {
      await ctl('start_app');
      await waitForPort(port);
    },
    remove,
  };
}
