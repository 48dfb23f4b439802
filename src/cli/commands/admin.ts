import { createServer } from 'node:http';
import type { Command } from 'commander';
import type { Outbox } from '../../index.js';
import { UsageError } from '../failure.js';
import { port } from '../parse.js';
import type { Run } from '../session.js';
import { listenForSignals, note } from '../signals.js';

interface AdminFlags {
  port: number;
  host: string;
  readOnly?: boolean;
  token?: string;
}

/** Where the token comes from when --token is not given: keeps it out of the process list. */
const TOKEN_ENV = 'PG_OUTBOX_ADMIN_TOKEN';

export function addAdminCommand(program: Command, run: Run): void {
  program
    .command('admin')
    .summary('serve the admin page until SIGINT/SIGTERM')
    .description(
      'serve the admin page (subscriptions, dead letters with replay and discard, message journeys, search by ' +
        `key) over HTTP until SIGINT or SIGTERM. Writes need --token (or $${TOKEN_ENV}); without one the page ` +
        'is read-only',
    )
    .option('--port <n>', 'port to listen on (0: any free port)', port, 8080)
    .option('--host <address>', 'address to listen on (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--read-only', 'no replay or discard, whatever the token')
    .option('--token <secret>', `token that replay and discard need (default: $${TOKEN_ENV})`)
    .action((flags: AdminFlags) => {
      const token = flags.token ?? process.env[TOKEN_ENV];
      if (token !== undefined && token.length < 8)
        throw new UsageError('--token needs at least 8 characters');
      return run(({ outbox, schema }) => serveAdmin(outbox, schema, { ...flags, token }), {
        consumers: false,
        relay: { enabled: false },
      });
    });
}

async function serveAdmin(outbox: Outbox, schema: string, flags: AdminFlags): Promise<void> {
  const signals = listenForSignals('admin page');
  const handler = outbox.adminHandler({
    readOnly: flags.readOnly === true,
    ...(flags.token === undefined ? {} : { token: flags.token }),
  });
  const server = createServer(handler);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(flags.port, flags.host, resolve);
    });
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : flags.port;
    const mode =
      flags.readOnly === true || flags.token === undefined
        ? 'read-only'
        : 'replay and discard need the token';
    note(
      `admin page of schema "${schema}" at http://${flags.host}:${port}/ (${mode}); SIGINT or SIGTERM stops it`,
    );
    const signal = await signals.first;
    note(`${signal}: stopping the admin page`);
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    note('admin page stopped');
  } finally {
    signals.dispose();
  }
}
