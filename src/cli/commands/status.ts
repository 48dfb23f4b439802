import type { Command } from 'commander';
import type { OutboxStatus, SubscriptionStatus } from '../../index.js';
import { duration, printJson, printLines, table, type Column } from '../output.js';
import type { Run } from '../session.js';

const count = (header: string, value: (s: SubscriptionStatus) => number): Column<SubscriptionStatus> => ({
  header,
  value: (s) => String(value(s)),
  align: 'right',
});

const COLUMNS: Column<SubscriptionStatus>[] = [
  { header: 'SUBSCRIPTION', value: (s) => s.name },
  count('PENDING', (s) => s.pending),
  count('DELAYED', (s) => s.delayed),
  count('IN FLIGHT', (s) => s.inFlight),
  count('DEAD', (s) => s.dead),
  count('DONE/1H', (s) => s.doneLastHour),
  count('FAILED/1H', (s) => s.failedLastHour),
  {
    header: 'OLDEST PENDING',
    value: (s) => (s.pending === 0 ? '-' : duration(s.oldestPendingMs)),
    align: 'right',
  },
];

export function addStatusCommand(program: Command, run: Run): void {
  program
    .command('status')
    .summary('counts per subscription and the relay backlog')
    .description(
      'per subscription: pending, delayed, in-flight and dead deliveries, done and failed in the last hour, ' +
        'age of the oldest pending; and the relay backlog',
    )
    .option('--json', 'print the status object as JSON')
    .action((opts: { json?: boolean }) =>
      run(async ({ outbox, schema }) => {
        const status = await outbox.status();
        if (opts.json) printJson(status);
        else printLines(...statusText(status, schema));
      }),
    );
}

function statusText(status: OutboxStatus, schema: string): string[] {
  const subscriptions =
    status.subscriptions.length === 0
      ? [`no subscriptions in schema "${schema}": add one with pg-outbox declare`]
      : table(COLUMNS, status.subscriptions);
  const { backlog, lagMs } = status.relay;
  return [...subscriptions, '', `relay backlog ${backlog}, lag ${duration(lagMs)}`];
}
