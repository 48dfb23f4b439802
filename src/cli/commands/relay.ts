import type { Command } from 'commander';
import { ExitCode } from '../exit-codes.js';
import { printJson } from '../output.js';
import type { Outbox } from '../../index.js';
import type { Run } from '../session.js';

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

function note(line: string): void {
  process.stderr.write(`pg-outbox: ${line}\n`);
}

export function addRelayCommands(program: Command, run: Run): void {
  const relay = program
    .command('relay')
    .summary('run the relay until SIGINT/SIGTERM (relay reset: reposition it)')
    .description(
      'run the relay (fan-out of committed messages to subscriptions) until SIGINT or SIGTERM, then stop ' +
        'gracefully; one relay is active per schema, others stand by',
    )
    .action(() => run(({ outbox, schema }) => runRelay(outbox, schema), { consumers: false }));

  relay
    .command('reset')
    .summary('reposition the relay after a restore or cluster move')
    .description(
      "set the relay's position to now and relay every message that has no delivery yet " +
        '(after a restore or a move to another cluster; run as the schema owner)',
    )
    .action(() => run(async ({ outbox }) => printJson(await outbox.resetRelay())));
}

/** Starts the relay, waits for SIGINT or SIGTERM, stops it; each step is a line on stderr. */
async function runRelay(outbox: Outbox, schema: string): Promise<void> {
  const signals = listenForSignals();
  let stopping = false;
  // Leadership is lost when the relay's session drops; it tries again on its own. stop() ends it on purpose.
  outbox.on('relay:leader', ({ leader }) => {
    if (!stopping)
      note(leader ? 'relay is active' : 'relay lost its session; it will try to take over again');
  });
  try {
    await outbox.start();
    note(
      `relay started on schema "${schema}" (active, or standing by for another); SIGINT or SIGTERM stops it`,
    );
    const signal = await signals.first;
    stopping = true;
    note(`${signal}: stopping the relay`);
    await outbox.stop();
    note('relay stopped');
  } finally {
    signals.dispose();
  }
}

/**
 * `first` resolves with the first SIGINT or SIGTERM. Listening from before start() on, so a signal during start is
 * not Node's default (exit at once); a second signal exits at once, for a stop that hangs.
 */
function listenForSignals(): { first: Promise<NodeJS.Signals>; dispose(): void } {
  let received: NodeJS.Signals | undefined;
  let resolve: (signal: NodeJS.Signals) => void = () => undefined;
  const first = new Promise<NodeJS.Signals>((r) => (resolve = r));
  const onSignal = (signal: NodeJS.Signals) => {
    if (received === undefined) {
      received = signal;
      resolve(signal);
      return;
    }
    note(`${signal} again: exiting without waiting for the relay to stop [INTERRUPTED]`);
    process.exit(ExitCode.unexpected);
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  return { first, dispose: () => SIGNALS.forEach((s) => process.off(s, onSignal)) };
}
