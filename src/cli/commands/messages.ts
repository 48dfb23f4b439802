import type { Command } from 'commander';
import { OutboxError, type DeliveryAudit, type FailureAudit, type MessageJourney } from '../../index.js';
import { fields, oneLine, plural, printJson, printLines, table, text, time, type Column } from '../output.js';
import type { Run } from '../session.js';

const DELIVERY_COLUMNS: Column<DeliveryAudit>[] = [
  { header: 'SUBSCRIPTION', value: (d) => d.subscription },
  { header: 'DELIVERY', value: (d) => d.deliveryId, align: 'right' },
  { header: 'STATUS', value: (d) => d.status },
  { header: 'ATTEMPTS', value: (d) => String(d.attempts), align: 'right' },
  { header: 'FIRST ATTEMPT', value: (d) => time(d.firstAttemptAt) },
  { header: 'LAST ATTEMPT', value: (d) => time(d.lastAttemptAt) },
  { header: 'COMPLETED', value: (d) => time(d.completedAt) },
  { header: 'CONSUMER', value: (d) => text(d.consumer) },
  { header: 'LAST ERROR', value: (d) => oneLine(d.lastError, 60) },
];

const FAILURE_COLUMNS: Column<FailureAudit>[] = [
  { header: 'SUBSCRIPTION', value: (f) => f.subscription },
  { header: 'DELIVERY', value: (f) => f.deliveryId, align: 'right' },
  { header: 'ATTEMPT', value: (f) => String(f.attempt), align: 'right' },
  { header: 'FAILED AT', value: (f) => time(f.failedAt) },
  { header: 'CONSUMER', value: (f) => text(f.consumer) },
  { header: 'ERROR', value: (f) => oneLine(f.error, 80) },
];

export function addMessageCommands(program: Command, run: Run): void {
  program
    .command('show <messageId>')
    .summary('a message and its deliveries, attempts and failures')
    .description('show a message and its journey: one delivery per subscription, with attempts and failures')
    .option('--json', 'print the journey as JSON')
    .action((id: string, opts: { json?: boolean }) =>
      run(async ({ outbox }) => {
        const journey = await outbox.journey(id);
        if (journey === null) {
          throw new OutboxError(
            'OUTBOX_UNKNOWN_MESSAGE',
            `no message ${id} (never published, or removed by retention)`,
            {
              value: id,
            },
          );
        }
        if (opts.json) printJson(journey);
        else printLines(...journeyText(journey));
      }),
    );

  program
    .command('cancel <messageId>')
    .summary("cancel a message's deliveries that have not started")
    .description(
      'cancel a message: none of its deliveries starts from now on (pending and delayed ones are dropped)',
    )
    .option('--json', 'print the result as JSON')
    .action((id: string, opts: { json?: boolean }) =>
      run(async ({ outbox, pool }) => {
        const result = await outbox.cancel(pool, id);
        if (opts.json) printJson(result);
        else
          printLines(
            `cancelled message ${id}: ${plural(result.cancelled, 'delivery', 'deliveries')} dropped`,
          );
      }),
    );
}

function journeyText({ message, deliveries, failures }: MessageJourney): string[] {
  const header = fields([
    ['message', message.id],
    ['topic', message.topic],
    ['key', text(message.key)],
    ['published', time(message.publishedAt)],
    ['deliver at', time(message.deliverAt)],
    ['relayed', message.relayed ? time(message.relayedAt) : 'not yet'],
    ['cancelled', time(message.cancelledAt)],
    ['headers', JSON.stringify(message.headers)],
    ['payload', JSON.stringify(message.payload)],
  ]);
  const deliveryLines = deliveries.length === 0 ? ['no deliveries'] : table(DELIVERY_COLUMNS, deliveries);
  const failureLines = failures.length === 0 ? ['no failures'] : table(FAILURE_COLUMNS, failures);
  return [...header, '', ...deliveryLines, '', ...failureLines];
}
