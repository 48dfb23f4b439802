#!/usr/bin/env node
import { Command, InvalidArgumentError } from 'commander';
import pg from 'pg';
import { pino } from 'pino';
import { createOutbox, type Outbox } from '../index.js';

interface GlobalOptions {
  databaseUrl?: string;
  schema: string;
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Opens a pool and an Outbox for one command, and always closes them. */
async function withOutbox(program: Command, fn: (outbox: Outbox) => Promise<void>): Promise<void> {
  const { databaseUrl, schema } = program.opts<GlobalOptions>();
  const connectionString = databaseUrl ?? process.env.DATABASE_URL;
  if (connectionString === undefined) {
    throw new InvalidArgumentError('set DATABASE_URL or pass --database-url');
  }
  const pool = new pg.Pool({ connectionString, max: 4 });
  const logger = pino({ level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
  try {
    await fn(createOutbox({ pool, schema, logger }));
  } finally {
    await pool.end();
  }
}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function buildProgram(): Command {
  const program = new Command('pg-outbox')
    .description('Operate a pg-outbox schema: migrations, status, dead letters, replay, and a relay process')
    .option('--database-url <url>', 'PostgreSQL connection string (default: $DATABASE_URL)')
    .option('--schema <name>', 'outbox schema', 'outbox');

  program
    .command('migrate')
    .description('create or upgrade the outbox schema (idempotent, safe to run concurrently)')
    .action(() => withOutbox(program, (o) => o.migrate()));

  // --ordered / --no-ordered and the like are left undefined when omitted (no default), so the stored setting stays.
  program
    .command('declare <subscription>')
    .description(
      'create a subscription (consumer group) or replace its topics; settings not given keep their stored value',
    )
    .requiredOption('--topic <topic>', 'topic name or pattern; repeat for several', collect)
    .option('--ordered', 'handle deliveries of one key one at a time, in order (new subscriptions: off)')
    .option('--no-ordered', 'turn per-key ordering off')
    .option(
      '--block-key-on-dead',
      'ordered: a dead-lettered delivery stops its key until replayed (new: off)',
    )
    .option('--no-block-key-on-dead', 'ordered: let a key move on past a dead letter')
    .action((name: string, opts: { topic: string[]; ordered?: boolean; blockKeyOnDead?: boolean }) =>
      withOutbox(program, (o) =>
        o.declareSubscription(name, {
          topics: opts.topic,
          ...(opts.ordered === undefined ? {} : { ordered: opts.ordered }),
          ...(opts.blockKeyOnDead === undefined ? {} : { blockKeyOnDead: opts.blockKeyOnDead }),
        }),
      ),
    );

  program
    .command('status')
    .description('per-subscription pending, delayed, in-flight and dead counts, and the relay backlog')
    .action(() => withOutbox(program, async (o) => print(await o.status())));

  program
    .command('dead-letters <subscription>')
    .description('list dead-lettered deliveries with their last error')
    .option('--limit <n>', 'at most this many', positiveInteger, 100)
    .action((name: string, opts: { limit: number }) =>
      withOutbox(program, async (o) => print(await o.deadLetters(name, { limit: opts.limit }))),
    );

  program
    .command('replay <subscription>')
    .description('re-queue dead letters: all of them, or the given delivery ids')
    .option('--id <deliveryId>', 'a delivery id; repeat for several', collect)
    .action((name: string, opts: { id?: string[] }) =>
      withOutbox(program, async (o) =>
        print(await o.replay(name, opts.id === undefined ? {} : { ids: opts.id })),
      ),
    );

  const relay = program
    .command('relay')
    .description('run the relay until SIGINT or SIGTERM (one is active per schema; others stand by)')
    .action(() =>
      withOutbox(program, async (o) => {
        await o.start();
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
        await o.stop();
      }),
    );
  relay
    .command('reset')
    .description(
      "set the relay's position to now and relay every message that has no delivery yet " +
        '(after a restore or a move to another cluster; run as the schema owner)',
    )
    .action(() => withOutbox(program, async (o) => print(await o.resetRelay())));

  return program;
}

buildProgram()
  .parseAsync()
  .catch((error: unknown) => {
    const message = error instanceof Error ? error.message : String(error);
    const code =
      typeof error === 'object' && error !== null && 'code' in error ? ` [${String(error.code)}]` : '';
    process.stderr.write(`pg-outbox: ${message}${code}\n`);
    process.exitCode = 1;
  });
