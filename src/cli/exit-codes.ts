/** The CLI's exit codes: scripts branch on them, so a code keeps its meaning across releases. */
export const ExitCode = {
  ok: 0,
  unexpected: 1,
  usage: 2,
  cannotConnect: 3,
  notMigrated: 4,
  unknownSubscription: 5,
  unknownId: 6,
  replayBeyondRetention: 7,
  invalidInput: 8,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

const MEANINGS: readonly [ExitCodeValue, string][] = [
  [ExitCode.ok, 'success'],
  [ExitCode.unexpected, 'unexpected error'],
  [ExitCode.usage, 'usage error: bad or missing arguments, unknown command or option, no database URL'],
  [
    ExitCode.cannotConnect,
    'cannot connect: bad URL, server unreachable, authentication failed, no such database',
  ],
  [ExitCode.notMigrated, 'the schema has no pg-outbox tables: run pg-outbox migrate'],
  [ExitCode.unknownSubscription, 'unknown subscription'],
  [ExitCode.unknownId, 'unknown message or delivery id'],
  [ExitCode.replayBeyondRetention, 'replay --since is older than what retention kept'],
  [ExitCode.invalidInput, 'invalid input rejected by pg-outbox (topic, subscription name, id, option)'],
];

/** The exit-code table for `pg-outbox --help`. */
export function exitCodeHelp(): string {
  const lines = MEANINGS.map(([code, meaning]) => `  ${String(code).padEnd(3)}${meaning}`);
  return [
    '',
    'Exit codes:',
    ...lines,
    '',
    'Errors are one line on stderr: pg-outbox: <message> [<CODE>]',
  ].join('\n');
}
