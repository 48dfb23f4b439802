import type { Command } from 'commander';
import type { DeadLetter, ReplayOptions, ReplayResult } from '../../index.js';
import { UsageError } from '../failure.js';
import { oneLine, plural, printJson, printLines, table, text, time, type Column } from '../output.js';
import { collect, isoTime, positiveInteger } from '../parse.js';
import type { Run } from '../session.js';

const COLUMNS: Column<DeadLetter>[] = [
  { header: 'DELIVERY', value: (d) => d.deliveryId, align: 'right' },
  { header: 'MESSAGE', value: (d) => d.messageId, align: 'right' },
  { header: 'TOPIC', value: (d) => d.topic },
  { header: 'KEY', value: (d) => text(d.key) },
  { header: 'ATTEMPTS', value: (d) => String(d.attempt), align: 'right' },
  { header: 'DEAD AT', value: (d) => time(d.deadAt) },
  { header: 'LAST ERROR', value: (d) => oneLine(d.lastError) },
];

interface ListOptions {
  limit: number;
  after?: string;
  json?: boolean;
}

interface ReplayFlags {
  id?: string[];
  all?: boolean;
  since?: Date;
  after?: string;
  limit?: number;
  json?: boolean;
}

export function addDeadLetterCommands(program: Command, run: Run): void {
  program
    .command('dead-letters <subscription>')
    .summary("list a subscription's dead letters")
    .description(
      "list a subscription's dead-lettered deliveries with their last error, oldest delivery id first",
    )
    .option('--limit <n>', 'at most this many', positiveInteger, 100)
    .option('--after <deliveryId>', 'only delivery ids above this one (the next page)')
    .option('--json', 'print the dead letters as JSON (with payloads and headers)')
    .action((name: string, opts: ListOptions) =>
      run(async ({ outbox }) => {
        const query = { limit: opts.limit, ...(opts.after === undefined ? {} : { after: opts.after }) };
        const deadLetters = await outbox.deadLetters(name, query);
        if (opts.json) printJson(deadLetters);
        else printLines(...deadLetterText(name, deadLetters, opts.limit));
      }),
    );

  program
    .command('replay <subscription>')
    .summary('queue dead letters again, or re-deliver messages since a time')
    .description(
      'queue deliveries again: dead letters by --id or --all, or with --since every retained message of the ' +
        "subscription's topics published since then",
    )
    .option('--id <deliveryId>', 'a dead-lettered delivery id; repeatable', collect)
    .option('--all', 'every dead letter of the subscription')
    .option('--since <time>', 're-deliver messages published at or after this ISO-8601 time', isoTime)
    .option(
      '--after <nextToken>',
      'with --since: go on from where a call cut at --limit stopped (the value it printed)',
    )
    .option('--limit <n>', 'with --since: look at most at this many messages', positiveInteger)
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExactly one of --id, --all and --since is required.')
    .action((name: string, flags: ReplayFlags) => {
      const options = replayOptions(flags);
      return run(async ({ outbox }) => {
        const result = await outbox.replay(name, options);
        if (flags.json) printJson(result);
        else printLines(...replayText(name, result, flags));
      });
    });

  program
    .command('discard <subscription>')
    .summary('give up on dead letters for good')
    .description(
      'finish dead letters as cancelled (kept in the audit trail; a key they blocked goes on): by --id or --all',
    )
    .option('--id <deliveryId>', 'a dead-lettered delivery id; repeatable', collect)
    .option('--all', 'every dead letter of the subscription')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExactly one of --id and --all is required.')
    .action((name: string, flags: { id?: string[]; all?: boolean; json?: boolean }) => {
      if ((flags.id === undefined) === (flags.all === undefined)) {
        throw new UsageError('discard needs exactly one of --id and --all');
      }
      const options = flags.id === undefined ? { all: true } : { ids: flags.id };
      return run(async ({ outbox }) => {
        const result = await outbox.discardDeadLetters(name, options);
        if (flags.json) printJson(result);
        else
          printLines(
            `discarded ${plural(result.discarded, 'dead letter', 'dead letters')} of subscription "${name}"`,
          );
      });
    });
}

/** The API's options for the one mode chosen; --id, --all and --since exclude each other. */
export function replayOptions(flags: ReplayFlags): ReplayOptions | undefined {
  const modes = [flags.id && '--id', flags.all && '--all', flags.since && '--since'].filter(Boolean);
  if (modes.length !== 1) {
    const found = modes.length === 0 ? 'none was given' : `got ${modes.join(' and ')}`;
    throw new UsageError(`replay needs exactly one of --id, --all and --since; ${found}`);
  }
  if (flags.since === undefined) {
    if (flags.after !== undefined || flags.limit !== undefined) {
      throw new UsageError('--after and --limit go with --since');
    }
    return flags.id === undefined ? undefined : { ids: flags.id };
  }
  return {
    since: flags.since,
    ...(flags.after === undefined ? {} : { after: flags.after }),
    ...(flags.limit === undefined ? {} : { limit: flags.limit }),
  };
}

function deadLetterText(name: string, deadLetters: DeadLetter[], limit: number): string[] {
  if (deadLetters.length === 0) return [`no dead letters in subscription "${name}"`];
  const lines = table(COLUMNS, deadLetters);
  const last = deadLetters.at(-1);
  if (deadLetters.length === limit && last !== undefined) {
    lines.push('', `more may follow: --after ${last.deliveryId}`);
  }
  return lines;
}

function replayText(name: string, result: ReplayResult, flags: ReplayFlags): string[] {
  const lines = [`replayed ${plural(result.replayed, 'delivery', 'deliveries')} of subscription "${name}"`];
  if (typeof result.next === 'string' && flags.since !== undefined) {
    lines.push(
      `stopped at --limit; continue with: --since ${flags.since.toISOString()} --after ${result.next}`,
    );
  }
  return lines;
}
