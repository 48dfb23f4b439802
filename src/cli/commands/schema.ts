import type { Command } from 'commander';
import { printJson, printLines } from '../output.js';
import { collect, positiveInteger, positiveNumber } from '../parse.js';
import { OutboxError } from '../../errors.js';
import type { Run } from '../session.js';

interface DeclareOptions {
  topic: string[];
  ordered?: boolean;
  blockKeyOnDead?: boolean;
  /** A rate, or false for --no-rate-limit. */
  rateLimit?: number | false;
  burst?: number;
  keyConcurrency?: number | false;
  json?: boolean;
}

export function addSchemaCommands(program: Command, run: Run): void {
  program
    .command('migrate')
    .summary('create or upgrade the outbox schema')
    .description(
      'create or upgrade the outbox schema (idempotent, safe to run from several processes at once)',
    )
    .action(() =>
      run(async ({ outbox, schema }) => {
        await outbox.migrate();
        printLines(`schema "${schema}" is migrated`);
      }),
    );

  // --ordered / --no-ordered have no default, so an omitted flag stays undefined and the stored setting is kept.
  program
    .command('declare <subscription>')
    .summary('create a subscription or change its topics and settings')
    .description(
      'create a subscription (consumer group) or replace its topics; settings not given keep their stored value',
    )
    .requiredOption(
      '--topic <topic>',
      'topic name or pattern (order.* one segment, order.# any); repeatable',
      collect,
    )
    .option(
      '--ordered',
      'hand out the deliveries of one key one at a time, in order (new subscriptions: off)',
    )
    .option('--no-ordered', 'turn per-key ordering off')
    .option(
      '--block-key-on-dead',
      'ordered: a dead-lettered delivery stops its key until replayed (new: off)',
    )
    .option('--no-block-key-on-dead', 'ordered: let a key move on past a dead letter')
    .option(
      '--rate-limit <perSecond>',
      'hand out at most this many deliveries a second, across all consumers (new: no limit)',
      positiveNumber,
    )
    .option(
      '--burst <count>',
      'with --rate-limit: deliveries an idle subscription may hand out at once',
      positiveNumber,
    )
    .option('--no-rate-limit', 'remove the rate limit')
    .option(
      '--key-concurrency <count>',
      'unordered: at most this many deliveries of one key in flight at once (new: no limit)',
      positiveInteger,
    )
    .option('--no-key-concurrency', 'remove the per-key limit')
    .option('--json', 'print what was declared as JSON')
    .action((name: string, opts: DeclareOptions) =>
      run(async ({ outbox }) => {
        const settings = {
          ...(opts.ordered === undefined ? {} : { ordered: opts.ordered }),
          ...(opts.blockKeyOnDead === undefined ? {} : { blockKeyOnDead: opts.blockKeyOnDead }),
          ...flowSettings(opts),
        };
        await outbox.declareSubscription(name, { topics: opts.topic, ...settings });
        if (opts.json) printJson({ subscription: name, topics: opts.topic, ...settings });
        else printLines(declaredLine(name, opts));
      }),
    );
}

/** --rate-limit / --burst / --key-concurrency as declareSubscription options (null: remove). */
function flowSettings(opts: DeclareOptions) {
  if (opts.burst !== undefined && typeof opts.rateLimit !== 'number') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', '--burst needs --rate-limit <perSecond>', {
      value: opts.burst,
    });
  }
  return {
    ...(opts.rateLimit === undefined
      ? {}
      : {
          rateLimit:
            opts.rateLimit === false
              ? null
              : { perSecond: opts.rateLimit, ...(opts.burst === undefined ? {} : { burst: opts.burst }) },
        }),
    ...(opts.keyConcurrency === undefined
      ? {}
      : { keyConcurrency: opts.keyConcurrency === false ? null : opts.keyConcurrency }),
  };
}

function declaredLine(name: string, opts: DeclareOptions): string {
  const setting = (label: string, value: boolean | undefined) =>
    `${label} ${value === undefined ? 'as stored' : value ? 'on' : 'off'}`;
  const limit = (label: string, value: number | false | undefined, unit = '') =>
    `${label} ${value === undefined ? 'as stored' : value === false ? 'none' : `${value}${unit}`}`;
  return (
    `declared subscription "${name}": topics ${opts.topic.join(', ')}; ` +
    `${setting('ordered', opts.ordered)}, ${setting('block key on dead', opts.blockKeyOnDead)}, ` +
    `${limit('rate limit', opts.rateLimit, '/s')}, ${limit('key concurrency', opts.keyConcurrency)}`
  );
}
