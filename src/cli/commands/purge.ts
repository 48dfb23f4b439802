import type { Command } from 'commander';
import type { PurgeResult } from '../../index.js';
import { fields, printJson, printLines } from '../output.js';
import type { Run } from '../session.js';

const LABELS: [keyof PurgeResult, string][] = [
  ['messages', 'messages'],
  ['finishedDeliveries', 'finished deliveries'],
  ['failures', 'failure records'],
  ['deadLetters', 'dead letters'],
  ['processedKeys', 'idempotency keys'],
];

export function addPurgeCommand(program: Command, run: Run): void {
  program
    .command('purge')
    .summary('run retention now (--dry-run counts only)')
    .description(
      'run retention now, to the end, with the default retention: finished messages older than 7 days with ' +
        'their deliveries and failures, dead letters and idempotency keys older than 30 days',
    )
    .option('--dry-run', 'count what would be removed, remove nothing')
    .option('--json', 'print the counts as JSON')
    .action((opts: { dryRun?: boolean; json?: boolean }) =>
      run(async ({ outbox }) => {
        const dryRun = opts.dryRun === true;
        const result = await outbox.purge({ dryRun });
        if (opts.json) printJson(result);
        else
          printLines(
            dryRun ? 'would remove:' : 'removed:',
            ...fields(LABELS.map(([k, l]) => [`  ${l}`, String(result[k])])),
          );
      }),
    );
}
