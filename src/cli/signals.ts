import { ExitCode } from './exit-codes.js';

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

/** A progress line of a long-running command, on stderr. */
export function note(line: string): void {
  process.stderr.write(`pg-outbox: ${line}\n`);
}

/**
 * `first` resolves with the first SIGINT or SIGTERM. Listening from before start() on, so a signal during start is
 * not Node's default (exit at once); a second signal exits at once, for a stop that hangs.
 */
export function listenForSignals(what: string): { first: Promise<NodeJS.Signals>; dispose(): void } {
  let received: NodeJS.Signals | undefined;
  let resolve: (signal: NodeJS.Signals) => void = () => undefined;
  const first = new Promise<NodeJS.Signals>((r) => (resolve = r));
  const onSignal = (signal: NodeJS.Signals) => {
    if (received === undefined) {
      received = signal;
      resolve(signal);
      return;
    }
    note(`${signal} again: exiting without waiting for the ${what} to stop [INTERRUPTED]`);
    process.exit(ExitCode.unexpected);
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  return { first, dispose: () => SIGNALS.forEach((s) => process.off(s, onSignal)) };
}
