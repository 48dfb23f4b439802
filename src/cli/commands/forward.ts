import type { Command } from 'commander';
import { OutboxError } from '../../errors.js';
import { nats, rabbitmq, type ForwardTarget, type Outbox } from '../../index.js';
import { collect, positiveInteger } from '../parse.js';
import type { Run } from '../session.js';
import { listenForSignals, note } from '../signals.js';

interface ForwardOptions {
  topic: string[];
  rabbitmq?: string;
  exchange?: string;
  assertExchange: boolean;
  nats?: string;
  stream?: string;
  concurrency?: number;
  batchSize?: number;
  relay: boolean;
}

export function addForwardCommand(program: Command, run: Run): void {
  program
    .command('forward <subscription>')
    .summary('forward a subscription to RabbitMQ or NATS JetStream until SIGINT/SIGTERM')
    .description(
      "publish the subscription's deliveries to a broker, each done only on the broker's confirm, until SIGINT " +
        'or SIGTERM, then stop gracefully (the relay runs too unless --no-relay)',
    )
    .requiredOption('--topic <topic>', 'topic name or pattern; repeatable', collect)
    .option('--rabbitmq <url>', 'RabbitMQ to publish to (amqp://user:password@host:5672)')
    .option('--exchange <name>', 'with --rabbitmq: the topic exchange (declared if missing)', 'pg-outbox')
    .option('--no-assert-exchange', 'with --rabbitmq: use the exchange as it exists, do not declare it')
    .option('--nats <servers>', 'NATS JetStream to publish to (nats://host:4222, comma-separated)')
    .option('--stream <name>', 'with --nats: create this stream for the topics if it does not exist')
    .option('--concurrency <count>', 'publishes in flight at once (default 200)', positiveInteger)
    .option('--batch-size <count>', 'deliveries claimed at once (default 500)', positiveInteger)
    .option('--no-relay', 'do not run the relay in this process')
    .action((name: string, opts: ForwardOptions) =>
      run(({ outbox }) => runForward(outbox, name, opts), { relay: { enabled: opts.relay } }),
    );
}

function targetOf(opts: ForwardOptions): ForwardTarget {
  if ((opts.rabbitmq === undefined) === (opts.nats === undefined)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'forward needs exactly one of --rabbitmq <url> or --nats <servers>',
    );
  }
  if (opts.rabbitmq !== undefined) {
    const assertExchange = opts.assertExchange ? 'topic' : false;
    return rabbitmq({ url: opts.rabbitmq, exchange: opts.exchange, assertExchange });
  }
  const servers = (opts.nats ?? '').split(',');
  const stream =
    opts.stream === undefined ? undefined : { name: opts.stream, subjects: opts.topic.map(toSubject) };
  return nats({ servers, stream });
}

/** A topic pattern as a NATS subject filter: `#` (one or more segments) is `>`, `*` is the same. */
function toSubject(topic: string): string {
  return topic.replace(/(^|\.)#$/, '$1>');
}

async function runForward(outbox: Outbox, name: string, opts: ForwardOptions): Promise<void> {
  const to = targetOf(opts);
  const signals = listenForSignals('forwarder');
  try {
    outbox.forward(name, {
      topics: opts.topic,
      to,
      ...(opts.concurrency === undefined ? {} : { concurrency: opts.concurrency }),
      ...(opts.batchSize === undefined ? {} : { batchSize: opts.batchSize }),
    });
    await outbox.start();
    note(`forwarding "${name}" to ${to.name}; SIGINT or SIGTERM stops it`);
    const signal = await signals.first;
    note(`${signal}: stopping the forwarder`);
    await outbox.stop();
    note('forwarder stopped');
  } finally {
    signals.dispose();
  }
}
