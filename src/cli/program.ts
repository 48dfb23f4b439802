import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { addAdminCommand } from './commands/admin.js';
import { addDeadLetterCommands } from './commands/dead-letters.js';
import { addForwardCommand } from './commands/forward.js';
import { addMessageCommands } from './commands/messages.js';
import { addPurgeCommand } from './commands/purge.js';
import { addRelayCommands } from './commands/relay.js';
import { addSchemaCommands } from './commands/schema.js';
import { addStatusCommand } from './commands/status.js';
import { exitCodeHelp } from './exit-codes.js';
import { sessionRunner } from './session.js';

/**
 * The `pg-outbox` command line. Commander throws instead of exiting and prints no errors of its own, so main.ts
 * prints every failure the same way and picks the exit code.
 */
export function buildProgram(): Command {
  const program = new Command('pg-outbox')
    .description(
      'Operate a pg-outbox schema: migrations, subscriptions, status, messages, dead letters, replay, relay, forward, admin page',
    )
    .option('--database-url <url>', 'PostgreSQL connection string (default: $DATABASE_URL)')
    .option('--schema <name>', 'outbox schema', 'outbox')
    .version(packageVersion(), '-V, --version', 'print the pg-outbox version')
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .showSuggestionAfterError()
    .configureHelp({ showGlobalOptions: true })
    .addHelpText('after', exitCodeHelp());
  // Subcommands copy these settings when they are created, so the order above matters.
  const run = sessionRunner(program);
  addSchemaCommands(program, run);
  addStatusCommand(program, run);
  addMessageCommands(program, run);
  addDeadLetterCommands(program, run);
  addPurgeCommand(program, run);
  addRelayCommands(program, run);
  addForwardCommand(program, run);
  addAdminCommand(program, run);
  return program;
}

/** From src/cli/ and from dist/cli/ alike, the package.json is two folders up. */
function packageVersion(): string {
  const file = new URL('../../package.json', import.meta.url);
  return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
}
