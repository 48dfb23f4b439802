#!/usr/bin/env node
import { CommanderError } from 'commander';
import { ExitCode, type ExitCodeValue } from './exit-codes.js';
import { describeFailure } from './failure.js';
import { buildProgram } from './program.js';
import type { GlobalOptions } from './session.js';

/** Runs one command line; every failure becomes one stderr line `pg-outbox: <message> [<CODE>]` and an exit code. */
async function main(argv: string[]): Promise<ExitCodeValue> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return ExitCode.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return ExitCode.ok;
      // No command given: commander has printed the help to stderr.
      if (error.code === 'commander.help') return ExitCode.usage;
    }
    const failure = describeFailure(error, program.opts<GlobalOptions>().schema);
    process.stderr.write(`pg-outbox: ${failure.message} [${failure.code}]\n`);
    return failure.exitCode;
  }
}

// exitCode, not exit(): stdout is flushed and the pool closed before the process ends.
process.exitCode = await main(process.argv);
