import type { Command } from 'commander';
import { printJson } from '../output.js';
import { listenForSignals, note } from '../signals.js';
import type { Outbox } from '../../index.js';
import type { Run } from '../session.js';

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
  const signals = listenForSignals('relay');
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
